"""Client internals are fenced: outside each backend's ``_compat`` module, no code reads or
writes a broker client's private state (DESIGN §5: one ``_compat`` per backend, with the
versions verified and a tested fallback)."""

from __future__ import annotations

import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "dispytch"

#: ``receiver._name``: private unless the receiver is ``self``/``cls`` (our own state).
ATTRIBUTE = re.compile(r"([\w.\])]+)\.(_[a-z]\w*)")
#: ``getattr(x, "_name"...)``.
GETATTR = re.compile(r"getattr\([^)]*\"_[a-z]")
#: Our own objects reached through an attribute (not a client's).
OURS = ("self.owner._", "_compat.", "._compat", "super()._build(")


def _private(code: str) -> bool:
    if GETATTR.search(code):
        return True
    return any(receiver not in ("self", "cls") for receiver, _ in ATTRIBUTE.findall(code))


def _private_access(package: pathlib.Path) -> dict[str, str]:
    found = {}
    for path in package.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if _private(code) and not any(ours in code for ours in OURS):
                found[f"{path.relative_to(SRC)}:{n}"] = line.strip()
    return found


@pytest.mark.parametrize("backend", ["kafka"])
def test_only_compat_touches_private_client_state(backend: str) -> None:
    assert _private_access(SRC / backend) == {}
