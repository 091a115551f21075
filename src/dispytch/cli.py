"""Command line: ``dispytch run module:app``, ``dispytch docs gen|serve module:app``,
``dispytch dlq list|show|replay|purge`` (see :mod:`dispytch.dlq.cli`).

``run`` imports the app, starts it, and on SIGINT or SIGTERM stops fetching, lets in-flight
work finish (the app's ``shutdown_timeout``), settles it, and exits. Work still running after
that is cancelled; a handler that ignores the cancellation for the app's ``shutdown_grace``
seconds is abandoned and the process exits with status 1, its message unacknowledged. A second
signal stops waiting for in-flight work (cancel, grace, exit 130); unsettled messages stay
unacknowledged and the broker redelivers them.

Exit status: 0 after a clean stop, 1 when the app stopped on an error (a dead letter that
could not be stored anywhere, handlers that ignored cancellation...), 2 for a configuration
error, 130 after a second signal.

``--workers N`` runs N processes under a supervisor that restarts a worker that dies (each
knows its place from ``DISPYTCH_WORKER_INDEX`` and ``DISPYTCH_WORKERS``, see
:mod:`dispytch.workers`);
``--reload`` restarts the worker when a ``.py`` file under the current directory changes.

``--http HOST:PORT`` serves ``/healthz``, ``/readyz`` and ``/metrics`` (see
:mod:`dispytch.probes`); with ``--workers N`` worker *i* (from 0) listens on ``PORT + i``.
``--log-level``, ``--log-format text|json`` and ``--log-config FILE`` set logging up (see
:func:`dispytch.logs.configure_logging`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dispytch.app import ENV_BROKER_URL, App
from dispytch.backoff import Backoff
from dispytch.dlq.cli import add_dlq_commands, run_dlq
from dispytch.errors import ConfigurationError, DispytchError, ShutdownError
from dispytch.logs import LEVELS, configure_logging
from dispytch.probes import ProbeServer, parse_address
from dispytch.redaction import redact, secrets_of
from dispytch.workers import ENV_WORKER_INDEX, ENV_WORKERS

__all__ = ["load_app", "main"]

logger = logging.getLogger("dispytch.cli")


def load_app(target: str) -> App:
    """Import ``module:attribute``; the attribute is an App or a function returning one."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"expected 'module:attribute', like 'billing.service:app'; got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} ({exc}); run from the project directory or fix the path"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App) and callable(obj):
        obj = obj()
    if not isinstance(obj, App):
        raise ConfigurationError(f"{target} is a {type(obj).__name__}, not a dispytch.App")
    return obj


async def serve(app: App, http: tuple[str, int] | None = None) -> None:
    """Run ``app`` until SIGINT/SIGTERM, then shut it down gracefully; with ``http``
    (``(host, port)``), serve the probes and metrics there meanwhile."""
    server = None
    if http is not None:
        server = ProbeServer(app, *http)
        await server.start()
        logger.info("serving /healthz, /readyz and /metrics on %s", server.url)
    try:
        await _serve(app)
    finally:
        if server is not None:
            await server.close()


async def _serve(app: App) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("received %s; finishing in-flight events", signal.Signals(signum).name)
            app.request_stop()
        elif main_task is not None:
            logger.warning("second signal; exiting now, unfinished events stay unacknowledged")
            main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _with_metrics(app: App) -> None:
    """``--http`` serves ``/metrics``: give an app without metrics the Prometheus middleware
    (when ``dispytch[prometheus]`` is installed)."""
    try:
        from dispytch.prometheus import PrometheusMiddleware
    except ImportError:
        logger.info('/metrics needs dispytch[prometheus]: pip install "dispytch[prometheus]"')
        return
    if not any(isinstance(m, PrometheusMiddleware) for m in app.middleware):
        app.add_middleware(PrometheusMiddleware())


def _run_one(target: str, http: tuple[str, int] | None = None) -> int:
    # Secrets known before the app exists (the URL in the environment), then the backend's.
    secrets = secrets_of(os.environ.get(ENV_BROKER_URL, ""))
    try:
        app = load_app(target)
        if http is not None:
            _with_metrics(app)
    except ConfigurationError as exc:
        logger.error("%s", redact(str(exc), secrets))
        return 2
    secrets |= app.backend.secrets
    # Not asyncio.run(): its clean-up waits without a bound for every task to finish, and a
    # handler that ignores cancellation would keep the process alive for ever.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code, wait = 0, app.shutdown_grace
    try:
        loop.run_until_complete(serve(app, http))
    except asyncio.CancelledError:
        code = 130
    except ConfigurationError as exc:
        # One line that says what is wrong (a connect error names the broker and the cause),
        # no traceback, never a secret.
        logger.error("%s", redact(str(exc), secrets))
        code = 2
    except DispytchError as exc:
        logger.error("exiting with status 1: %s: %s", type(exc).__name__, redact(str(exc), secrets))
        code = 1
        if isinstance(exc, ShutdownError):
            wait = 0.0  # its tasks were already given their grace
    except Exception:
        logger.exception("exiting with status 1: the app failed")
        code = 1
    if not _close_loop(loop, wait):
        # Tasks or threads that cannot be stopped: leave without them. Their messages were
        # never acknowledged, so the broker hands them to the next consumer.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 1)
    return code


def _close_loop(loop: asyncio.AbstractEventLoop, grace: float) -> bool:
    """Cancel what is left on ``loop`` and close it, waiting at most ``grace`` s for tasks and
    for the default executor's threads. ``False`` when something did not stop in time."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=max(grace, 0.01)))
        stuck = [task for task in tasks if not task.done()]
        if stuck:
            logger.error(
                "%d task(s) still running after being cancelled; exiting without them",
                len(stuck),
            )
            return False
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: the app already reported what failed
    loop.run_until_complete(loop.shutdown_asyncgens())
    try:
        loop.run_until_complete(
            asyncio.wait_for(loop.shutdown_default_executor(), max(grace, 0.01))
        )
    except TimeoutError:
        logger.error("worker threads still running after %.1fs; exiting without them", grace)
        return False
    asyncio.set_event_loop(None)
    loop.close()
    return True


def _snapshot(root: Path) -> dict[Path, float]:
    out: dict[Path, float] = {}
    for path in root.rglob("*.py"):
        if any(part.startswith(".") or part == "__pycache__" for part in path.parts):
            continue
        with contextlib.suppress(OSError):
            out[path] = path.stat().st_mtime
    return out


def _supervise(
    argv: Sequence[str],
    workers: int,
    reload: bool,
    http: tuple[str, int] | None = None,
) -> int:
    """Run ``workers`` child processes; restart dead ones; forward SIGINT/SIGTERM. With
    ``http``, worker ``i`` serves its probes and metrics on ``port + i``."""
    stopping = False

    def spawn(index: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "dispytch", *argv]
        if http is not None:
            host, port = http
            cmd += ["--http", f"[{host}]:{port + index if port else 0}"]
        # A session of its own: a Ctrl-C in the terminal reaches the supervisor only, which
        # forwards it once (a worker that got it twice would stop at once, without draining).
        env = {**os.environ, ENV_WORKERS: str(workers), ENV_WORKER_INDEX: str(index)}
        return subprocess.Popen(cmd, start_new_session=True, env=env)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [spawn(i) for i in range(workers)]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    root = Path.cwd()
    seen = _snapshot(root) if reload else {}
    restarts = Backoff(0.5, 30.0)
    while True:
        time.sleep(0.5)
        if stopping:
            return max((child.wait() for child in children), default=0)
        if reload:
            now = _snapshot(root)
            if now != seen:
                seen = now
                logger.info("code changed; restarting %d worker(s)", len(children))
                for child in children:
                    child.terminate()
                for child in children:
                    child.wait()
                children = [spawn(i) for i in range(workers)]
                continue
        for i, child in enumerate(children):
            code = child.poll()
            if code == 2 and not stopping:
                # A configuration or connect error: a restart would fail the same way.
                logger.error("worker %d could not start (exit code 2); stopping", child.pid)
                on_signal(signal.SIGTERM, None)
                for other in children:
                    other.wait()
                return 2
            if code is not None and not stopping:
                delay = restarts.failed()
                logger.error(
                    "worker %d exited with %d; restarting in %.1fs", child.pid, code, delay
                )
                time.sleep(delay)
                children[i] = spawn(i)


def _add_docs_commands(sub: Any) -> None:
    docs = sub.add_parser("docs", help="the app's AsyncAPI 3.0 document: gen, serve")
    docs_sub = docs.add_subparsers(dest="docs_command", required=True)
    gen = docs_sub.add_parser("gen", help="write the AsyncAPI document: dispytch docs gen m:app")
    serve_ = docs_sub.add_parser("serve", help="serve a page that renders the AsyncAPI document")
    for cmd in (gen, serve_):
        cmd.add_argument("target", help="the app, as module:attribute (e.g. billing.service:app)")
        cmd.add_argument("--broker-url", help=f"broker URL; sets {ENV_BROKER_URL} for the app")
        cmd.add_argument("--title", help="document title (default: the app's group)")
        cmd.add_argument("--version", default="1.0.0", help="document version (default 1.0.0)")
    gen.add_argument("--format", choices=("yaml", "json"), default="yaml")
    gen.add_argument("--out", help="write to this file instead of standard output")
    serve_.add_argument("--host", default="127.0.0.1")
    serve_.add_argument("--port", type=int, default=8000, help="0 picks a free port")


def _docs(args: argparse.Namespace) -> int:
    import json

    from dispytch.asyncapi import asyncapi, dump_yaml
    from dispytch.asyncapi.serve import docs_server

    if args.broker_url:
        os.environ[ENV_BROKER_URL] = args.broker_url
    try:
        app = load_app(args.target)
        options = {"title": args.title, "version": args.version}
        if args.docs_command == "gen":
            document = asyncapi(app, **options)
            if args.format == "json":
                text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            else:
                text = dump_yaml(document)
            if args.out:
                Path(args.out).write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
            return 0
        server = docs_server(app, args.host, args.port, **options)
    except ConfigurationError as exc:
        logger.error("%s", exc)
        return 2
    port = server.server_address[1]
    print(f"AsyncAPI docs of {args.target} at http://{args.host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dispytch", description="Run Dispytch services.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_docs_commands(sub)
    add_dlq_commands(sub)
    run = sub.add_parser("run", help="run an app: dispytch run module:app")
    run.add_argument("target", help="the app, as module:attribute (e.g. billing.service:app)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    run.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    run.add_argument("--broker-url", help=f"broker URL; sets {ENV_BROKER_URL} for the app")
    _add_operations_options(run)
    args = parser.parse_args(argv)
    if args.command == "dlq":
        logging.basicConfig(level=os.environ.get("DISPYTCH_LOG_LEVEL", "WARNING").upper())
        return run_dlq(args)
    if args.command == "docs":
        logging.basicConfig(level=os.environ.get("DISPYTCH_LOG_LEVEL", "WARNING").upper())
        return _docs(args)
    if args.log_config and (args.log_level or args.log_format):
        parser.error("--log-config sets levels and formats itself; drop --log-level/--log-format")
    http = None
    try:
        configure_logging(args.log_level, args.log_format or "text", args.log_config)
        if args.http:
            http = parse_address(args.http)
    except ConfigurationError as exc:
        parser.exit(2, f"dispytch: error: {exc}\n")
    if args.broker_url:
        os.environ[ENV_BROKER_URL] = args.broker_url
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1 or args.reload:
        child_argv = ["run", args.target]
        for option in ("log_level", "log_format", "log_config"):
            value = getattr(args, option)
            if value:
                child_argv += ["--" + option.replace("_", "-"), value]
        if http is not None and http[1] and http[1] + args.workers - 1 > 65535:
            parser.error(f"--http: ports {http[1]}..{http[1] + args.workers - 1} do not all exist")
        return _supervise(child_argv, args.workers, args.reload, http)
    return _run_one(args.target, http)


def _add_operations_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=os.environ.get("DISPYTCH_LOG_LEVEL", "").upper() or None,
        metavar="LEVEL",
        help=(
            f"lowest level logged: {', '.join(LEVELS)} (default: $DISPYTCH_LOG_LEVEL or INFO); "
            "DEBUG adds one line per handled event (logger dispytch.events)"
        ),
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="text lines (default) or one JSON object per line, with event_id, topic, handler, "
        "duration_ms and outcome on the per-event records",
    )
    run.add_argument(
        "--log-config",
        metavar="FILE",
        help="configure logging from FILE instead: a logging dictConfig in .json or .yaml "
        "(PyYAML), or a fileConfig .ini; excludes --log-level and --log-format",
    )
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /healthz (liveness), /readyz (readiness) and /metrics (Prometheus) there, "
        "e.g. 0.0.0.0:9000 (port 0: any free one); with --workers N, worker i uses PORT+i",
    )
