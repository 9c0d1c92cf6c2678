"""Plugin bundles, publisher keys, the TUF-protected index, scanning and
installation: everything between a plugin author's folder and a plugin
folder the single-host supervisor runs.

One module per job:

- `bundle`     pack a folder into a deterministic `.roseyplug`; open one safely
- `rosey`      map Rosey's `manifest.yaml` onto Precinct's manifest fields
- `keys`       publisher / index Ed25519 keys on disk, detached signatures
- `index`      the plugin index: a TUF repository (python-tuf Metadata API)
- `client`     fetch and verify releases with python-tuf's ngclient
- `scan`       bandit + a permission check of what the code imports and calls
- `install`    atomic install / update / rollback / remove into a plugins dir
- `fetch`      `precinct plugin fetch`: one verified release into a folder, for a Pod
- `catalog`    what the dashboard's marketplace page lists (runtime/market_web.py serves it)
- `errors`     the one exception family: one line naming the failed check

The `precinct plugin ...` and `precinct market ...` commands are in cli/market.py.
"""

from .errors import MarketError

__all__ = ["MarketError"]
