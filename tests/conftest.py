from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispytch")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compat-fallbacks",
        action="store_true",
        help="run every backend on the fallbacks of its _compat module (no private client "
        "state read; see tests/fallbacks.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--compat-fallbacks"):
        return
    skip = pytest.mark.skip(reason="checks what private client access adds (--compat-fallbacks)")
    for item in items:
        if item.get_closest_marker("private_access") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _compat_fallbacks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.config.getoption("--compat-fallbacks"):
        from tests.fallbacks import force_fallbacks

        force_fallbacks(monkeypatch)
