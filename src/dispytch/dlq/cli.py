"""``dispytch dlq list|show|replay|purge``: operate dead letters from a shell.

The dead letters come from an app (``module:app``: its backend and group) or a broker URL
(``--broker-url`` or ``DISPYTCH_BROKER_URL``). Every value that came off the wire (topics, header
values, error messages, payloads) is escaped before it is printed, and the broker URL's secrets
never appear. Exit status: 0 done, 1 a replay or purge failed part-way (what was not confirmed
stays stored: run it again to resume), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from dispytch.dead_letter import DeadLetter
from dispytch.dlq.selection import Selection, decode_envelope
from dispytch.dlq.store import DEFAULT_BATCH, DeadLetterStore, PurgeReport, ReplayReport
from dispytch.errors import ConfigurationError, DispytchError
from dispytch.poison import HEADER_B64_PREFIX, TOPIC_B64_HEADER, UNDECODABLE_HEADER
from dispytch.redaction import redact, secrets_of
from dispytch.untrusted import loggable

__all__ = ["add_dlq_commands", "run_dlq"]

ENV_BROKER_URL = "DISPYTCH_BROKER_URL"

#: Longest value printed by ``show`` (headers, error messages, payload previews).
_SHOWN_CHARS = 2000
_FAILURE_HEADERS = (
    "x-dispytch-reason",
    "x-dispytch-error-type",
    "x-dispytch-error-message",
    "x-dispytch-handler",
    "x-dispytch-attempts",
    "x-dispytch-failed-at",
    "x-dispytch-original-topic",
    "x-dispytch-original-partition",
    "x-dispytch-original-offset",
)


def add_dlq_commands(sub: Any) -> None:
    """Add ``dlq`` and its subcommands to the ``dispytch`` parser."""
    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list, show, replay, purge",
        description="Operate dead letters of an app (module:app) or a broker URL.",
    )
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    list_ = commands.add_parser("list", help="per original topic: count, oldest, newest, reasons")
    show = commands.add_parser("show", help="dead letters with headers, failure and envelope")
    replay = commands.add_parser("replay", help="publish dead letters again, then remove them")
    purge = commands.add_parser("purge", help="remove dead letters for good")
    for cmd in (list_, show, replay, purge):
        cmd.add_argument("target", nargs="?", help="the app, as module:attribute (optional)")
        cmd.add_argument("--broker-url", help=f"broker URL (default: ${ENV_BROKER_URL})")
        cmd.add_argument(
            "--group",
            help="consumer group (default: the app's; fallback and "
            "RabbitMQ dead-letter queues are per group)",
        )
        cmd.add_argument("--topic", action="append", default=[], help="original topic (repeat)")
        cmd.add_argument(
            "--reason",
            action="append",
            default=[],
            help="decode, validation, handler, redelivery, middleware (repeat)",
        )
        cmd.add_argument("--handler", action="append", default=[], help="handler name (repeat)")
        cmd.add_argument(
            "--error-type",
            action="append",
            default=[],
            help="exception class name, e.g. ValueError (repeat)",
        )
        cmd.add_argument("--since", help="failed at or after: ISO 8601, ms, or ago (30m, 2h, 7d)")
        cmd.add_argument("--until", help="failed before: ISO 8601, ms, or ago (30m, 2h, 7d)")
        cmd.add_argument("--event-id", action="append", default=[], help="event id (repeat)")
    for cmd in (list_, show):
        cmd.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--limit", type=int, default=20, help="most dead letters shown (20)")
    show.add_argument("--raw", action="store_true", help="always print the payload base64")
    replay.add_argument("--to", help="publish to this topic instead of each original topic")
    replay.add_argument("--rate", help="at most this many per second: 100, 100/s, 600/m")
    replay.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"published per round trip, and so at most doubled after a kill ({DEFAULT_BATCH})",
    )
    for cmd in (replay, purge):
        cmd.add_argument("--dry-run", action="store_true", help="count, change nothing")
    purge.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")


def run_dlq(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run one ``dispytch dlq`` command; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.broker_url:
        os.environ[ENV_BROKER_URL] = args.broker_url
    secrets = secrets_of(os.environ.get(ENV_BROKER_URL, ""))
    try:
        selection = Selection.build(
            topics=args.topic,
            reasons=args.reason,
            handlers=args.handler,
            error_types=args.error_type,
            since=args.since,
            until=args.until,
            event_ids=args.event_id,
        )
        source = _source(args)
        command = _Command(args, selection, out, err)
        return asyncio.run(command.run(source))
    except ConfigurationError as exc:
        err.write(f"dispytch dlq: {redact(str(exc), secrets)}\n")
        return 2
    except DispytchError as exc:
        err.write(f"dispytch dlq: {type(exc).__name__}: {redact(str(exc), secrets)}\n")
        return 1
    except KeyboardInterrupt:
        err.write("dispytch dlq: interrupted; what was not confirmed stays stored\n")
        return 130
    except Exception as exc:  # a broker error: one line, never a secret
        err.write(f"dispytch dlq: {type(exc).__name__}: {redact(loggable(exc, 500), secrets)}\n")
        return 1


def _source(args: argparse.Namespace) -> Any:
    from dispytch.cli import load_app

    if args.target:
        return load_app(args.target)
    url = os.environ.get(ENV_BROKER_URL)
    if not url:
        raise ConfigurationError(
            f"no dead letters to open: pass the app (dispytch dlq list billing.service:app), "
            f"--broker-url, or set {ENV_BROKER_URL}"
        )
    if url.partition("://")[0].lower() == "memory":
        raise ConfigurationError(
            "memory:// keeps dead letters inside one process: pass the app (module:app) whose "
            "memory broker holds them"
        )
    return url


class _Command:
    def __init__(
        self, args: argparse.Namespace, selection: Selection, out: IO[str], err: IO[str]
    ) -> None:
        self.args = args
        self.selection = selection
        self.out = out
        self.err = err

    async def run(self, source: Any) -> int:
        from dispytch.dlq import open_store

        async with open_store(source, group=self.args.group) as store:
            handler: Callable[[DeadLetterStore], Any] = getattr(self, self.args.dlq_command)
            code: int = await handler(store)
            return code

    # -- list ---------------------------------------------------------------------------------

    async def list(self, store: DeadLetterStore) -> int:
        summaries = await store.list(self.selection)
        if self.args.json:
            rows = [
                {
                    "topic": s.topic,
                    "count": s.count,
                    "oldest": s.oldest,
                    "newest": s.newest,
                    "reasons": dict(s.reasons),
                    "destinations": dict(s.destinations),
                }
                for s in summaries
            ]
            self.out.write(json.dumps(rows, indent=2) + "\n")
            return 0
        if not summaries:
            self.out.write("no dead letters\n")
            return 0
        table = [("TOPIC", "COUNT", "OLDEST", "NEWEST", "REASONS", "DESTINATIONS")]
        table.extend(
            (
                loggable(s.topic, 120),
                str(s.count),
                _time(s.oldest),
                _time(s.newest),
                ", ".join(f"{loggable(r, 40)}={n}" for r, n in s.reasons.most_common()),
                ", ".join(f"{loggable(d, 120)}={n}" for d, n in s.destinations.most_common()),
            )
            for s in summaries
        )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            cells = [
                cell.rjust(widths[i]) if i == 1 else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ]
            self.out.write("  ".join(cells).rstrip() + "\n")
        total = sum(s.count for s in summaries)
        self.out.write(f"{total} dead letter(s) in {len(summaries)} topic(s)\n")
        return 0

    # -- show ---------------------------------------------------------------------------------

    async def show(self, store: DeadLetterStore) -> int:
        letters = await store.read(self.selection, limit=max(self.args.limit, 0))
        if self.args.json:
            self.out.write(
                json.dumps([_as_json(letter) for letter in letters], indent=2, default=repr) + "\n"
            )
            return 0
        if not letters:
            self.out.write("no dead letters\n")
        for letter in letters:
            self.out.write(_shown(letter, raw=self.args.raw))
        return 0

    # -- replay -------------------------------------------------------------------------------

    async def replay(self, store: DeadLetterStore) -> int:
        rate = _rate(self.args.rate)
        dry = self.args.dry_run
        total = await store.count(self.selection)
        if total == 0:
            self.out.write("no dead letters selected\n")
            return 0
        where = f"to {loggable(self.args.to)}" if self.args.to else "to their original topics"
        self.err.write(
            f"{'would replay' if dry else 'replaying'} {total} dead letter(s) {where}"
            f"{f' at most {rate:g}/s' if rate else ''}; each is removed ({store.removal}) once "
            f"its publish is confirmed; interrupted, at most {self.args.batch} are published "
            "twice\n"
        )
        progress = ProgressOutput(self.err, "replayed", total)
        report = await store.replay(
            self.selection,
            to=self.args.to,
            dry_run=dry,
            rate=rate,
            batch=self.args.batch,
            progress=progress.replay,
            total=total,
        )
        progress.finish()
        self.out.write(_replay_summary(report) + "\n")
        if report.failed:
            self.err.write(
                f"dispytch dlq: replay stopped: {loggable(report.error, 500)}; the dead letters "
                "not confirmed stay stored: run the same command again to resume\n"
            )
            return 1
        return 0

    # -- purge --------------------------------------------------------------------------------

    async def purge(self, store: DeadLetterStore) -> int:
        total = await store.count(self.selection)
        if total == 0:
            self.out.write("no dead letters selected\n")
            return 0
        if not self.args.dry_run and not self.args.yes:
            if not _interactive():
                raise ConfigurationError(
                    f"purge would remove {total} dead letter(s) for good; pass --yes to confirm "
                    "(no terminal to ask on)"
                )
            self.err.write(f"remove {total} dead letter(s) for good? [y/N] ")
            self.err.flush()
            answer = await asyncio.to_thread(sys.stdin.readline)
            if answer.strip().lower() not in ("y", "yes"):
                self.out.write("nothing removed\n")
                return 0
        progress = ProgressOutput(self.err, "removed", total)
        report = await store.purge(
            self.selection, dry_run=self.args.dry_run, progress=progress.purge, total=total
        )
        progress.finish()
        if report.dry_run:
            self.out.write(f"would remove {report.selected} dead letter(s)\n")
        else:
            self.out.write(f"removed {report.removed} dead letter(s)\n")
        return 0


class ProgressOutput:
    """Progress on ``stream``: a bar redrawn in place on a terminal, plain lines (at most one a
    second, and a last one) otherwise."""

    def __init__(self, stream: IO[str], verb: str, total: int, width: int = 30) -> None:
        self.stream = stream
        self.verb = verb
        self.total = total
        self.width = width
        self.tty = _isatty(stream)
        self._last = 0.0
        self._drawn = False
        self._line = ""

    def replay(self, report: ReplayReport) -> None:
        done = report.replayed + report.skipped_count + report.failed
        extra = f", {report.skipped_count} skipped" if report.skipped_count else ""
        if report.failed:
            extra += f", {report.failed} failed"
        verb = "would replay" if report.dry_run else self.verb
        self._show(done, report.replayed, f"{verb} {report.replayed}{extra}", report.rate)

    def purge(self, report: PurgeReport) -> None:
        count = report.selected if report.dry_run else report.removed
        self._show(count, count, f"{self.verb} {count}", None)

    def _show(self, done: int, count: int, text: str, rate: float | None) -> None:
        now = time.monotonic()
        final = done >= self.total
        speed = f" ({rate:.0f}/s)" if rate else ""
        if self.tty:
            if not final and now - self._last < 0.1:
                return
            filled = int(self.width * min(done, self.total) / max(self.total, 1))
            bar = "#" * filled + "." * (self.width - filled)
            self._line = f"\r[{bar}] {done}/{self.total} {text}{speed}"
            self.stream.write(self._line + "\x1b[K")
            self._drawn = True
        else:
            if not final and now - self._last < 1.0:
                return
            self.stream.write(f"{text} of {self.total}{speed}\n")
        self.stream.flush()
        self._last = now

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _interactive() -> bool:
    return _isatty(sys.stdin) and _isatty(sys.stderr)


def _rate(text: str | None) -> float | None:
    """``100``, ``100/s``, ``600/m`` or ``3600/h`` as events per second."""
    if text is None:
        return None
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if per is None or not value > 0 or value == float("inf"):
        raise ConfigurationError(f"--rate takes events per second: 100, 100/s, 600/m; got {text!r}")
    return value / per


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    try:
        stamp = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _replay_summary(report: ReplayReport) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    parts = [f"{verb} {report.replayed} of {report.selected} selected dead letter(s)"]
    if report.skipped:
        reasons = "; ".join(f"{n}: {why}" for why, n in report.skipped.items())
        parts.append(f"skipped {report.skipped_count} ({reasons})")
    if report.failed:
        parts.append(f"{report.failed} failed (left stored)")
    if not report.dry_run and report.replayed:
        parts.append(f"{report.rate:.0f}/s")
    return ", ".join(parts)


def _shown(letter: DeadLetter, *, raw: bool) -> str:
    h = letter.headers
    lines = [f"--- {loggable(letter.destination, 200)} @ {loggable(letter.position, 60)}"]
    lines.append(f"topic:      {loggable(letter.topic, _SHOWN_CHARS)}")
    if letter.key is not None:
        lines.append(f"key:        {loggable(letter.key, _SHOWN_CHARS)}")
    lines.append(
        f"failure:    {loggable(letter.reason or '?', 40)}"
        + (f" in {loggable(letter.handler, 200)}" if letter.handler else "")
        + f" after {letter.attempts} attempt(s), at {_time(letter.failed_at)}"
    )
    lines.append(
        f"error:      {loggable(letter.error_type, 200)}: "
        f"{loggable(letter.error_message, _SHOWN_CHARS)}"
    )
    origin = [
        f"{name.removeprefix('x-dispytch-original-')} {loggable(h[name], 40)}"
        for name in ("x-dispytch-original-partition", "x-dispytch-original-offset")
        if name in h
    ]
    if origin:
        lines.append(f"origin:     {', '.join(origin)}")
    undecodable = h.get(UNDECODABLE_HEADER)
    if undecodable:
        lines.append(f"undecodable: {loggable(undecodable, 100)} (raw parts below, base64)")
        if TOPIC_B64_HEADER in h:
            lines.append(f"  topic:    {_b64_text(h[TOPIC_B64_HEADER])}  [{h[TOPIC_B64_HEADER]}]")
        for name, value in h.items():
            if name.startswith(HEADER_B64_PREFIX):
                raw_name, _, raw_value = value.partition(":")
                lines.append(
                    f"  header:   {_b64_text(raw_name)} = {_b64_text(raw_value)}  "
                    f"[{loggable(value, _SHOWN_CHARS)}]"
                )
    others = [
        (k, v)
        for k, v in h.items()
        if k not in _FAILURE_HEADERS
        and k != UNDECODABLE_HEADER
        and k != TOPIC_B64_HEADER
        and not k.startswith(HEADER_B64_PREFIX)
    ]
    if others:
        lines.append("headers:")
        lines.extend(f"  {loggable(k, 200)}: {loggable(v, _SHOWN_CHARS)}" for k, v in others)
    envelope = decode_envelope(letter.payload)
    if envelope is not None:
        lines.append("envelope:")
        lines.extend(
            f"  {name}: {loggable(envelope[name], 200)}"
            for name in ("id", "type", "timestamp")
            if name in envelope
        )
        body = json.dumps(envelope.get("body"), ensure_ascii=True, default=repr)
        lines.append(f"  body: {loggable(body, _SHOWN_CHARS)}")
    else:
        lines.append(
            f"payload:    {len(letter.payload)} bytes, not an envelope: "
            f"{loggable(letter.payload, 200)}"
        )
    if raw or envelope is None:
        lines.append(f"payload (base64): {base64.b64encode(letter.payload).decode()}")
    return "\n".join(lines) + "\n\n"


def _b64_text(value: str) -> str:
    try:
        return loggable(base64.b64decode(value, validate=True), 200)
    except ValueError:
        return "(not base64)"


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "topic": letter.topic,
        "destination": letter.destination,
        "position": letter.position,
        "key_b64": None if letter.key is None else base64.b64encode(letter.key).decode(),
        "headers": dict(letter.headers),
        "envelope": decode_envelope(letter.payload),
        "payload_b64": base64.b64encode(letter.payload).decode(),
    }
