"""`precinct`, the command line: the top layer, composing every other package.

  main.py        the `precinct` app: validate, plan, crd, up, status, logs, say,
                 console, creds, top, dashboard, render, operator, resume
  fleet.py       a set of plugin paths checked as the runtimes would (validate, plan)
  market.py      `precinct plugin ...` and `precinct market ...`
  kubernetes.py  the bodies of `precinct render` and `precinct operator`
"""

from .main import app, main

__all__ = ["app", "main"]
