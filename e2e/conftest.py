"""e2e options, fixtures, the mode and the skip when no cluster is reachable:
see e2e_support.py (a module of its own so that `pytest tests e2e` does not mix
two conftests)."""

from e2e_support import (  # noqa: F401
    cluster, core_nats, full, images, no_kubelet, pytest_addoption, pytest_report_header, pytest_runtest_logreport,
    pytest_terminal_summary, release,
)
