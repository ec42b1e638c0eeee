"""uvicorn's httptools protocol, writing each response's head and body in one go.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two writes, so two system calls per response on a
TCP_NODELAY socket (and often two packets). For a short JSON answer the second costs as much as
the first. Here each response's first write is held until the next one, or until the end of
the current event-loop iteration at the latest, and then both go out as one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CoalescingTransport:
    """A transport for one response: its first write waits to be joined by the second."""

    __slots__ = ("_held", "_joined", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._joined = False

    def write(self, data: bytes) -> None:
        if self._joined:
            self._transport.write(data)
        elif self._held is None:
            self._held = data
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            held, self._held, self._joined = self._held, None, True
            self._transport.write(held + data)

    def flush(self) -> None:
        """Write what is held (nothing followed it within the loop iteration)."""
        if self._held is not None:
            held, self._held, self._joined = self._held, None, True
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ChatHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one write per short response."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _CoalescingTransport(self.transport)  # type: ignore[assignment]
