"""The wire contract: every name another process relies on, defined once.

  subjects.py    NATS subjects: Rosey's (chat, commands, events, replies,
                 storage) and Precinct's own (pings, config, violations,
                 storage, statistics)
  headers.py     NATS message headers
  kubernetes.py  the BotPlugin API group, labels, annotations, finalizer
  environment.py every PRECINCT_* environment variable, what reads it, its flag

The plugin runner (plugins/runner) is a separate, untrusted distribution: it
keeps its own copy of the few names it needs (precinct_runner/wire.py), and
tests/test_wire.py proves the copy equals these. Nothing here imports
anything: it is the lowest layer (pyproject.toml [tool.importlinter]).
"""
