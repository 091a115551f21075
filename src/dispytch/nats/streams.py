"""Streams: find or grow the JetStream stream that stores a subject.

JetStream stores a message only if a stream's subjects capture its subject, and no subject may
be captured by two streams (nor by two subjects of one stream). The backend owns one stream
(``dispytch`` by default) and adds subjects to it as handlers need them; a subject another
stream already captures is consumed from that stream instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from dispytch.errors import ConfigurationError
from dispytch.nats.subjects import covers, merge_subjects

__all__ = ["add_subjects", "ensure_stream", "stream_for"]

#: JetStream error codes.
_STREAM_NAME_IN_USE = 10058
_OVERLAPS_OTHER_STREAM = 10065

#: Read-modify-write rounds before giving up when other processes update the stream too.
_UPDATE_ROUNDS = 8


async def ensure_stream(
    js: JetStreamContext, name: str, subjects: list[str], options: Mapping[str, Any]
) -> None:
    """Create stream ``name`` capturing ``subjects`` unless a stream of that name exists."""
    try:
        await js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(StreamConfig(name=name, subjects=subjects, **options))
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:  # created meanwhile by another process: fine
            raise _config_error(name, subjects, exc) from exc


async def add_subjects(
    js: JetStreamContext, name: str, subjects: Iterable[str], options: Mapping[str, Any]
) -> None:
    """Make stream ``name`` capture every subject in ``subjects`` (creating it if needed).

    Idempotent, and safe against other processes doing the same: the stream is read, merged
    and updated until a fresh read shows every subject covered.
    """
    wanted = list(dict.fromkeys(subjects))
    if not wanted:
        return
    for _ in range(_UPDATE_ROUNDS):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(
                    StreamConfig(name=name, subjects=merge_subjects([], wanted), **options)
                )
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == _STREAM_NAME_IN_USE:
                    continue
                raise _config_error(name, wanted, exc) from exc
            continue  # read it back: another process may have created it differently
        current = list(info.config.subjects or [])
        if all(any(covers(have, want) for have in current) for want in wanted):
            return
        config = info.config
        config.subjects = merge_subjects(current, wanted)
        try:
            await js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise _config_error(name, wanted, exc) from exc
    raise ConfigurationError(
        f"could not add {wanted} to stream {name!r}: other processes keep changing it; retry"
    )


async def stream_for(
    js: JetStreamContext, managed: str, subject: str, options: Mapping[str, Any]
) -> str:
    """The stream that stores ``subject``: a stream already capturing it, else ``managed``
    (grown to capture it)."""
    try:
        found = await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        found = None
    if found is not None and found != managed:
        return found
    await add_subjects(js, managed, [subject], options)
    return managed


def _config_error(
    name: str, subjects: list[str], exc: nats.js.errors.APIError
) -> ConfigurationError:
    if exc.err_code == _OVERLAPS_OTHER_STREAM:
        return ConfigurationError(
            f"cannot add {subjects} to stream {name!r}: another stream already captures some "
            "of these subjects but not all (JetStream stores a subject in one stream only); "
            "make that stream capture the whole filter, or use topics it does not overlap "
            "(list streams with: nats stream ls)"
        )
    return ConfigurationError(
        f"JetStream refused stream {name!r} with subjects {subjects}: {exc.description} "
        f"(code {exc.err_code}); fix the stream options or the stream on the server"
    )
