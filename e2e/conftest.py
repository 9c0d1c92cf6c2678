"""e2e fixtures and the skip when no cluster is reachable: see e2e_support.py
(a module of its own so that `pytest tests e2e` does not mix two conftests)."""

from e2e_support import cluster, core_nats, images, pytest_report_header, release  # noqa: F401
