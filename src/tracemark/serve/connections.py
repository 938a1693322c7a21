"""Connection-level limits of the HTTP server: read deadlines for request heads and bodies, and a connection cap.

uvicorn closes idle keep-alive connections, but not one that trickles its request head a byte at a time
(slowloris) or never finishes its body. :class:`DeadlineH11Protocol` gives each request ``header_timeout``
seconds, from the connection's start or the previous answer, to deliver its head, then ``body_timeout``
seconds to deliver its body; a connection that misses a deadline is closed (after a 408 answer when one can
still be sent). ``limit_concurrency`` answers 503 to requests beyond ``max_connections`` open connections.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from tracemark.serve.config import ServeConfig

_TIMEOUT_BODY = b'{"detail":"request body not received in time; send it faster or in one piece"}'


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head and on its body."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout = header_timeout, body_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None  # loop time by which the current phase must end (None: no deadline)
        self._phase: object = None  # h11.IDLE (awaiting a head), h11.SEND_BODY, or None (no deadline)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start the deadline of the phase the client is in (head or body), unless it is already running.

        One timer per connection serves every request on it: moving the deadline only records the new time, and
        the timer, when it fires early, waits on for the deadline now due (no timer is made or cancelled per request).
        """
        state = self.conn.their_state
        phase = state if state in (h11.IDLE, h11.SEND_BODY) else None
        if phase is self._phase or self.transport.is_closing():
            return
        self._phase = phase
        if phase is None:
            self._due = None
            return
        self._due = self.loop.time() + (self.header_timeout if phase is h11.IDLE else self.body_timeout)
        if self._timer is None:
            self._timer = self.loop.call_at(self._due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._due is None or self.transport.is_closing():
            return
        if self.loop.time() < self._due:
            self._timer = self.loop.call_at(self._due, self._check)
            return
        self._expired()

    def _expired(self) -> None:
        """Close a connection that missed its deadline; a request whose body is late gets a 408 first."""
        cycle = self.cycle
        if self._phase is h11.SEND_BODY and cycle is not None and not cycle.response_started:
            try:
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_TIMEOUT_BODY)).encode()),
                           (b"connection", b"close")]
                self.transport.write(self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout")) or b"")
                self.transport.write(self.conn.send(h11.Data(data=_TIMEOUT_BODY)) or b"")
                self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError:
                pass
            cycle.response_started = cycle.response_complete = cycle.disconnected = True  # the app's answer is dropped
            cycle.message_event.set()
        what = "head" if self._phase is h11.IDLE else "body"
        self.logger.info("request %s not received within %g s; connection closed",
                         what, self.header_timeout if what == "head" else self.body_timeout)
        self.transport.close()


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """The uvicorn settings that carry ``config``'s connection limits (pass them to ``uvicorn.run`` or ``uvicorn.Config``)."""
    protocol = functools.partial(DeadlineH11Protocol, header_timeout=config.header_timeout, body_timeout=config.body_timeout)
    return {"http": protocol, "limit_concurrency": config.max_connections, "server_header": False,
            "timeout_keep_alive": max(1, min(5, int(config.header_timeout)))}


__all__ = ["DeadlineH11Protocol", "uvicorn_options"]
