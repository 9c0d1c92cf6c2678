"""precinct-runner: hosts one Rosey-style plugin in its sandbox.

Run it as `python -m precinct_runner --help`. It runs inside the untrusted
box: nothing here is a security boundary, only plumbing.
"""

__version__ = "0.1.0"
