"""What a source failure is: its class (``ErrorKind``) from PyAV, FFmpeg or OS exceptions."""

from __future__ import annotations

import errno
import socket
import threading
from typing import Literal, get_args
from urllib.parse import urlsplit

import av
import av.error

from lva_common.config import mask_reference, mask_url

ErrorKind = Literal[
    "connection_refused",
    "timeout",
    "not_found",
    "unsupported_codec",
    "corrupt_data",
    "end_of_stream",
    "unsupported_scheme",
    "io_error",
]
# The same values as a tuple, derived: one list to edit.
ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)


class SourceError(Exception):
    """A source failure with its class (``kind``, one of ``ERROR_KINDS``) and a message for people."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind

    def __repr__(self) -> str:
        return f"SourceError({self.kind!r}, {str(self)!r})"


def _resolves(host: str, timeout: float) -> bool | None:
    """Whether ``host`` resolves (None: no answer in time). getaddrinfo has no timeout of its own."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, name=f"resolve:{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def classify(
    exc: BaseException,
    *,
    elapsed: float | None = None,
    timeout: float | None = None,
    reference: str | None = None,
) -> SourceError:
    """The SourceError for an exception of PyAV, FFmpeg or the OS.

    ``elapsed`` and ``timeout`` say how long the failed call ran and how long it was allowed:
    an error after the whole timeout is a timeout whatever FFmpeg calls it (an RTSP server
    that accepts the connection and never answers surfaces as "Invalid data").
    """
    if isinstance(exc, SourceError):
        return exc
    where = f" ({mask_url(reference)})" if reference else ""
    text = f"{type(exc).__name__}: {exc}"
    if reference:
        # FFmpeg's messages quote the URL they failed on, credentials and all.
        text = mask_reference(text, reference)
    if isinstance(exc, av.error.ExitError) or (
        elapsed is not None and timeout is not None and elapsed >= 0.9 * timeout
    ):
        waited = elapsed if elapsed is not None else timeout
        return SourceError("timeout", f"no data for {waited:.1f} s{where}" if waited else f"timed out{where}")
    if isinstance(exc, TimeoutError):
        return SourceError("timeout", f"timed out{where}: {text}")
    if isinstance(exc, ConnectionRefusedError):
        return SourceError("connection_refused", f"connection refused{where}")
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError | PermissionError):
        return SourceError("connection_refused", f"access refused{where}: {text}")
    if isinstance(
        exc, av.error.HTTPNotFoundError | FileNotFoundError | IsADirectoryError | NotADirectoryError
    ):
        return SourceError("not_found", f"not found{where}: {text}")
    if isinstance(
        exc, av.error.DecoderNotFoundError | av.error.DemuxerNotFoundError | av.error.PatchWelcomeError
    ):
        return SourceError("unsupported_codec", f"unsupported format or codec{where}: {text}")
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return SourceError("unsupported_scheme", f"unsupported protocol{where}: {text}")
    if isinstance(exc, av.error.InvalidDataError):
        return SourceError("corrupt_data", f"corrupt data{where}: {text}")
    if isinstance(exc, av.error.EOFError | EOFError):
        return SourceError("end_of_stream", f"end of stream{where}")
    if isinstance(exc, OSError) and exc.errno == errno.EIO and reference:
        # FFmpeg reports a host it cannot resolve as a plain I/O error; tell the two apart.
        host = urlsplit(reference).hostname
        if host and _resolves(host, timeout or 5.0) is False:
            return SourceError("not_found", f"cannot resolve host {host!r}{where}")
    return SourceError("io_error", f"I/O error{where}: {text}")
