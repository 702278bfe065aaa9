"""Structured logs (structlog): JSON lines with a request id bound per request.

No log line carries what a client or a shopper sent: our own events name ids and codes only;
SQLAlchemy's engines hide statement parameters (``hide_parameters``); libraries that log
statements, rows, requests or addresses at INFO or DEBUG (SQLAlchemy, aiosqlite, httpx,
Twilio's client, aiosmtplib) are held at WARNING whatever the level; and exceptions are
logged as their types and the places they were raised, never their messages, which quote
values (a statement's parameters, a database's DETAIL line, the character an encoder
refused, an address).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

_OUR_FRAMES = 10  # innermost frames of our own code kept per exception
_LIBRARY_FRAMES = 3  # and the innermost frames, wherever they are
# Loggers whose INFO and DEBUG lines quote data: SQL with rows, a driver's calls with their
# parameters, request URLs and bodies (an access token, a phone number), SMTP envelopes.
_DATA_LOGGERS = ("sqlalchemy.engine", "aiosqlite", "httpx", "httpcore", "twilio", "aiosmtplib")


class WholeLines:
    """Each log line in one ``write()``. structlog's PrintLogger prints, which writes a line
    and its newline apart: a Dramatiq worker process's stdout is a pipe whose every write
    is a message of its own, and two processes' lines then run together in the log. With
    no stream, whatever ``sys.stdout`` is at the time (a test's captured output, say)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        out = self._stream or sys.stdout
        out.write(message + "\n")
        out.flush()

    debug = info = warning = warn = error = critical = exception = fatal = msg


def request_id() -> str | None:
    """The id of the request this code serves: bound per HTTP request by the middleware,
    and in a worker from what its message carries (``tasks.CARRIED_LOG_CONTEXT``)."""
    bound = structlog.contextvars.get_contextvars().get("request_id")
    return str(bound) if bound else None


def serve_request(request_id: str | None) -> None:
    """From here on this code's lines carry ``request_id`` (if there is one): for work that
    learns which request it serves from the database, a wave's step from its wave."""
    if request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id)


@contextlib.contextmanager
def keeping_request_id() -> Iterator[None]:
    """On leaving the block, the request id bound before it (or none) is bound again."""
    before = request_id()
    try:
        yield
    finally:
        if before is None:
            structlog.contextvars.unbind_contextvars("request_id")
        else:
            structlog.contextvars.bind_contextvars(request_id=before)


def configure_logging(
    level: str = "INFO",
    json: bool = True,
    stream: TextIO | None = None,
    *,
    libraries: bool = True,
) -> None:
    """Our structured logs at ``level`` to ``stream`` (by default standard output); with
    ``libraries``, the standard library's loggers too (a Dramatiq worker process keeps
    Dramatiq's own handler, which sends its lines to the supervisor)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exception_without_values,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: WholeLines(stream),
        cache_logger_on_first_use=False,
    )
    quiet_data_loggers()
    if not libraries:
        return
    # Libraries log through the standard library; give them the same shape and level.
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True  # we log requests ourselves


def quiet_data_loggers() -> None:
    """Hold the loggers that quote data at WARNING. Also called by Dramatiq's worker
    processes, whose logging Dramatiq sets up at INFO: the twilio SDK would otherwise log
    every request with its To number, and httpx every URL."""
    for name in _DATA_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))


def exception_without_values(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Replace ``exc_info`` by ``exc_type`` (with the types of its causes) and
    ``exc_frames`` (``file:line function``, innermost last; our own frames and the last few
    of the libraries): enough to find the bug, nothing of the data."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("exception", None)
    exc = _exception(exc_info)
    if exc is not None:
        chain = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            chain.append(type(current).__qualname__)
            current = current.__cause__ or current.__context__
        event_dict["exc_type"] = " <- ".join(chain)
        event_dict["exc_frames"] = _frames(exc.__traceback__)
    return event_dict


def _exception(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return None


def _frames(tb: TracebackType | None) -> list[str]:
    frames = traceback.extract_tb(tb)
    ours = [i for i, frame in enumerate(frames) if "/backinstock/" in frame.filename]
    kept = sorted({*ours[-_OUR_FRAMES:], *range(len(frames))[-_LIBRARY_FRAMES:]})
    return [f"{frames[i].filename}:{frames[i].lineno} {frames[i].name}" for i in kept]
