# Known failures of work in progress, marked xfail (non-strict) so that CI stays meaningful for
# everything else while a capability is being built: `"tests/file.py::test_name": "reason"`.
# Empty since session 2 of 2026-12-01 (judge v2, the audit judge and the reward model landed).
import pytest

IN_PROGRESS: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = IN_PROGRESS.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=f"work in progress: {reason}", strict=False))
