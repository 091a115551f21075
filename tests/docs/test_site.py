"""The docs site builds with ``mkdocs build --strict`` (broken links, bad references and
mkdocstrings errors fail), and the README's demo command works on a fresh virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "reference" / "index.html").read_text()
    assert "publishes" in reference  # mkdocstrings rendered App's methods
    pages = ("getting-started", "concepts/testing", "backends/kafka", "asyncapi", "fastapi")
    for page in (*pages, "benchmarks"):
        assert (site / page / "index.html").exists(), page
    assert not (site / "performance").exists()  # merged into the one results page
    assert "FastStream defaults" in (site / "benchmarks" / "index.html").read_text()
    fonts = [p for p in site.rglob("*.html") if "fonts.googleapis" in p.read_text()]
    assert fonts == []


def test_demo_script_is_quick_when_installed() -> None:
    out = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "installing" not in out.stderr
    assert "handled:       2 event(s)" in out.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_demo_script_installs_what_it_needs_in_a_fresh_venv(tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    # What reaches the package index here (a proxy, a mirror, a CA bundle) still applies.
    passed = (
        "proxy",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_CERT",
        "SSL_CERT",
    )
    env.update(
        {
            k: v
            for k, v in os.environ.items()
            if k.lower().endswith("_proxy") or k.startswith(passed)
        }
    )
    out = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installing dispytch[core]" in out.stderr
    assert "handled:       2 event(s)" in out.stdout
    check = [str(env_dir / "bin" / "python"), "-c", "import pydantic"]
    assert subprocess.run(check, check=False).returncode == 0
