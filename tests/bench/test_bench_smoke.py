"""The benchmark harness still runs: a tiny in-memory pass, no timings asserted."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def bench(program: Path, *args: str, timeout: float = 60) -> str:
    """Run a bench program with ``args``; its standard output, once it exited 0."""
    done = subprocess.run(
        [sys.executable, str(program), *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_harness_runs_on_the_memory_backend_and_prints_a_table() -> None:
    out = bench(
        RUN,
        *("--backends", "memory", "--scenarios", "consume,publish"),
        *("--variants", "raw,dispytch", "--events", "200", "--repeats", "1"),
    )
    assert "ERROR" not in out, out
    header = next((line for line in out.splitlines() if line.startswith("| backend |")), "")
    columns = [c.strip() for c in header.strip("|").split("|")]
    # Only the variants that ran get a column, and a ratio column each besides Dispytch.
    assert columns == ["backend", "scenario", "raw loop", "Dispytch", "Dispytch / raw loop"], out
    for kind in ("consume", "publish-seq", "publish-batch"):
        row = next(
            (line for line in out.splitlines() if line.startswith(f"| memory | {kind} |")), ""
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(columns), out
        raw, dispytch = cells[2], cells[3]
        assert raw != "-" and dispytch != "-", row  # both variants produced a number
    assert "memory consume: Dispytch/raw" in out


def test_dlq_replay_bench_runs_on_the_memory_backend() -> None:
    out = bench(
        RUN.parent / "dlq_replay.py", "--backends", "memory", "--letters", "50", "--repeats", "1"
    )
    row = next(line for line in out.splitlines() if line.startswith("| memory |"))
    listed, replayed = (float(c.strip().replace(",", "")) for c in row.strip("|").split("|")[1:])
    assert listed > 0 and replayed > 0


def test_middleware_and_compare_options_run_and_print_their_tables() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    out = bench(
        RUN,
        *("--backends", "memory", "--scenarios", "consume", "--variants", "dispytch"),
        *("--middleware", "none,prometheus,otel", "--compare-src", str(src)),
        *("--events", "200", "--repeats", "1"),
        timeout=90,
    )
    assert "ERROR" not in out, out
    for variant in ("dispytch+prometheus", "dispytch+otel", "dispytch@compare"):
        assert f"memory consume #1 {variant}:" in out, out
    middleware = next(
        line for line in out.splitlines() if line.startswith("| memory | consume |") and "%" in line
    )
    assert middleware.count("%") == 2, middleware  # an overhead for prometheus and for otel
    compared = [line for line in out.splitlines() if line.startswith("| memory | consume |")]
    assert len(compared) == 3, out  # the main table, the comparison, the middleware table
    assert "memory consume with prometheus: client CPU" in out


def test_compare_src_without_a_dispytch_package_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--backends", "memory", "--compare-src", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no dispytch package there" in done.stderr


def test_publish_workers_take_turns_and_a_failing_one_reports_its_error() -> None:
    sys.path.insert(0, str(RUN.parent))
    try:
        import run as bench_run  # bench/run.py
    finally:
        sys.path.remove(str(RUN.parent))
    options = {"sequential": 200, "batch": 100, "interleave": 50}
    specs = [
        bench_run.Spec("publish", "memory", variant, 300, url="memory://", options=options)
        for variant in ("raw", "dispytch", "nosuchvariant")
    ]
    jobs = [(sys.executable, spec) for spec in specs]
    raw, dispytch, broken = asyncio.run(bench_run.run_in_turns(jobs, timeout=60))
    for result in (raw, dispytch):
        assert result["sequential"]["events"] == 200 and result["batched"]["events"] == 300
        assert result["turns"] == 200 // 50 + 1  # the sequential emits in turns, one batched
    assert "nosuchvariant" in broken["error"]
