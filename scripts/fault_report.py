"""Render fault-test results (JSON lines) as the Markdown table in RELIABILITY.md.

    DISPYTCH_FAULT_RESULTS=/tmp/faults.jsonl DISPYTCH_BROKERS=kafka,rabbitmq \\
        python -m pytest tests/faults
    python scripts/fault_report.py /tmp/faults.jsonl

When a scenario ran more than once, its last result is shown.
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    rows: dict[tuple[str, str], dict[str, object]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows[(row["scenario"], row["backend"])] = row
    print(
        "| Scenario | Backend | Events | Confirmed | Raised | Lost | Duplicates (bound) "
        "| Duration | Notes |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows.values():
        bound = "" if row["bound"] is None else f" (≤ {row['bound']})"
        lost = "n/a" if row["lost"] is None else row["lost"]
        duplicates = "n/a" if row["duplicates"] is None else f"{row['duplicates']}{bound}"
        print(
            f"| {row['scenario']} | {row['backend']} | {row['events']} | {row['confirmed']} "
            f"| {row['raised']} | {lost} | {duplicates} "
            f"| {row['duration_s']} s | {row['note']} |"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
