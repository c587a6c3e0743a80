"""What a call's two ends exchange, independent of the network: the :class:`Link` interface.

A link carries two kinds of traffic between the sender and the receiver of a call:

- **packets** (``bytes``): keypoint datagrams, unreliable and unordered: late is lost, as on a
  WebRTC data channel with ``ordered=False, maxRetransmits=0``;
- **controls** (JSON-able ``dict``): reliable and ordered: the session set-up (which may hold
  megabytes, e.g. a source image), keyframe requests, heartbeats, the end of the call.

:class:`MemoryLink` is an in-process pair for tests of the ends' logic; the WebRTC link
(``kpflow.call.transport``) implements the same interface over a real connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Link(Protocol):
    """One end of a call's connection."""

    #: (arrival time from ``time.monotonic()``, datagram) in arrival order
    packets: asyncio.Queue
    #: control messages in the order they were sent
    controls: asyncio.Queue
    #: set when the link is over: closed by either end, or the peer vanished (heartbeat timeout)
    closed: asyncio.Event

    @property
    def close_reason(self) -> str:
        """Why the link closed (empty while it is open)."""

    async def send_packet(self, data: bytes) -> None:
        """Send one datagram; it may be lost, reordered or dropped. Never blocks on the peer."""

    async def send_control(self, message: dict) -> None:
        """Send one control message, reliably and in order."""

    async def close(self, reason: str = "closed") -> None:
        """End the link; the peer's ``closed`` is set with this reason."""


class MemoryLink:
    """One end of an in-process link pair (:meth:`pair`): what one end sends, the other receives."""

    def __init__(self):
        self.packets: asyncio.Queue = asyncio.Queue()
        self.controls: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self._reason = ""
        self.peer: MemoryLink | None = None

    @classmethod
    def pair(cls) -> tuple[MemoryLink, MemoryLink]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    @property
    def close_reason(self) -> str:
        return self._reason

    async def send_packet(self, data: bytes) -> None:
        if not self.closed.is_set():
            self.peer.packets.put_nowait((time.monotonic(), bytes(data)))

    async def send_control(self, message: dict) -> None:
        if not self.closed.is_set():
            self.peer.controls.put_nowait(dict(message))

    async def close(self, reason: str = "closed") -> None:
        for end in (self, self.peer):
            if not end.closed.is_set():
                end._reason = reason
                end.closed.set()
