"""Which worker of ``dispytch run --workers N`` this process is.

The supervisor started by ``--workers N`` gives each worker process ``DISPYTCH_WORKERS=N`` and
``DISPYTCH_WORKER_INDEX`` (``0`` to ``N - 1``; a restarted worker keeps the index of the one it
replaces). A process started otherwise is worker 0 of 1.
"""

from __future__ import annotations

import os

__all__ = ["ENV_WORKERS", "ENV_WORKER_INDEX", "worker_slot"]

ENV_WORKERS = "DISPYTCH_WORKERS"
ENV_WORKER_INDEX = "DISPYTCH_WORKER_INDEX"


def worker_slot() -> tuple[int, int]:
    """``(index, workers)`` of this process; ``(0, 1)`` outside ``--workers``."""
    try:
        workers = max(1, int(os.environ.get(ENV_WORKERS) or 1))
        index = int(os.environ.get(ENV_WORKER_INDEX) or 0)
    except ValueError:
        return 0, 1
    return (index, workers) if 0 <= index < workers else (0, workers)
