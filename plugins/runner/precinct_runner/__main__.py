"""`python -m precinct_runner`: see precinct_runner.cli for options and exit codes."""

import os
import sys

# `python -m` puts the working directory first on sys.path. Supervisors start
# the runner inside the plugin folder, and plugin folders hold modules such as
# `queue.py` or `json.py` that would shadow the standard library for the
# runner itself. The plugin is imported as a package from --plugin-dir, so
# the working directory is never needed on the path.
_cwd = os.getcwd()
sys.path[:] = [p for p in sys.path if p not in ("", ".", _cwd)]

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
