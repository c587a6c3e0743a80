"""The call over a real network: a WebRTC :class:`~kpflow.call.link.Link` with HTTP signalling.

Two data channels on one ``RTCPeerConnection`` (aiortc):

- ``keypoints``: ``ordered=False, maxRetransmits=0``: the packets, late is lost. A packet is dropped
  at the sender rather than queued when the channel already holds :data:`PACKET_BACKLOG_BYTES`;
- ``control``: reliable and ordered: the controls, JSON dicts of any size up to
  :data:`MAX_CONTROL_BYTES`. A control that fits in :data:`CHUNK_BYTES` travels as one text frame;
  a larger one (a source image and the codec parameters: megabytes) as binary pieces of
  :data:`CHUNK_BYTES` (1 flag byte, ``1`` = more follows, ``0`` = last; then the piece), reassembled
  by the peer, and paced on the channel's buffered amount so that packets are not held long behind
  it. Still, aiortc sends every channel through one SCTP queue: a packet sent while a large control
  is in flight may wait behind a piece of it (loopback: ~10-30 ms at p95, up to ~1 s when SCTP
  retransmits), so a call sends its set-up before it streams packets.

Signalling is one HTTP request. The **receiver** runs a :class:`CallServer` (aiohttp): ``POST /offer``
with JSON ``{"sdp", "type", "token"}`` answers with the session description, or refuses: 403 for a
wrong token, 409 while a call is live, 400 for a malformed offer (each with a one-line reason). The
**sender** calls :func:`connect`, which gathers its ICE candidates first (no trickle), posts the
offer, applies the answer and returns once both channels are open. No ICE (STUN/TURN) servers are
used unless given; on loopback none is needed. When the receiver's URL (for the sender) or the
caller's address (for the receiver) is a loopback address, only ``127.0.0.1`` is offered as an ICE
candidate, so a call on one machine stays on the loopback interface.

Liveness: each end sends ``{"type": "heartbeat"}`` every ``heartbeat_interval`` seconds; anything
received (heartbeat, control piece, packet) proves the peer alive. After ``heartbeat_timeout``
seconds of silence the link closes with ``peer vanished: no heartbeat for 3.0 s`` (ICE consent
checks alone take ~30 s to notice). :meth:`WebRTCLink.close` sends ``{"type": "bye", "reason"}``
first, so the peer closes at once with that reason. The control types ``heartbeat`` and ``bye`` are
the transport's: they never reach :attr:`WebRTCLink.controls`.

Keep the event loop responsive (run rendering or model calls in a thread): a peer whose loop is
blocked for longer than the timeout sends nothing and is declared vanished. A stall of this end's
own loop is forgiven once (half a timeout to read what arrived meanwhile).

Every failure a user can cause (port in use, unreachable receiver, wrong URL, refused token, no
connection in time) raises :class:`CallError` with a one-line message.

Example (the receiver serves, the sender calls)::

    async with CallServer(token=None, port=0) as server:   # token generated: server.token
        print(server.url, server.token)
        link = await server.accept()
        ...                                                # leaving the block ends the call
    # elsewhere
    link = await connect("http://127.0.0.1:8765", token)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import json
import logging
import secrets
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence

if "tensorflow" in sys.modules and "aiortc" not in sys.modules:
    # Measured with TensorFlow 2.21 and aiortc's pylibsrtp 1.0: a segmentation fault in srtp_init.
    raise ImportError("kpflow.call: TensorFlow is already loaded, and aiortc crashes the process when it loads "
                      "after it; import kpflow.call before anything that imports TensorFlow, or hold the call "
                      "in its own process")

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError

log = logging.getLogger(__name__)

#: controls up to this size travel as one text frame; larger ones in binary pieces of this size
#: (well under every WebRTC implementation's message limit: aiortc assumes 64 KiB of its peer)
CHUNK_BYTES = 16 * 1024
#: the largest control (JSON, UTF-8) either end sends or accepts
MAX_CONTROL_BYTES = 64 * 1024 * 1024
#: the largest packet: a datagram, not a file
MAX_PACKET_BYTES = 16 * 1024
#: a packet is dropped at the sender when the keypoints channel already buffers this much
PACKET_BACKLOG_BYTES = 64 * 1024
#: a large control waits while the control channel buffers more than this (packets pass between)
CONTROL_HIGH_WATER = 64 * 1024
#: the control types the transport consumes
HEARTBEAT, BYE = "heartbeat", "bye"
#: seconds :meth:`WebRTCLink.close` waits for the peer to hang up after its bye
BYE_WAIT_S = 1.0

_MORE, _LAST = b"\x01", b"\x00"


class CallError(Exception):
    """A call that cannot start or go on, for a reason the user can act on (one line)."""


# --- ICE host candidates --------------------------------------------------------------------------
# aioice offers every interface address but 127.0.0.1 as a host candidate. A call on one machine
# should stay on the loopback interface (and must work where it is the only one), so while a peer
# connection gathers its candidates the addresses it offers can be chosen: the hook below replaces
# aioice's address lookup by the list in this context variable, when one is set (asyncio tasks
# inherit it), and defers to aioice otherwise.
_HOST_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "kpflow_call_host_addresses", default=None)


def _install_host_address_hook() -> None:
    import aioice.ice

    original = getattr(aioice.ice, "get_host_addresses", None)
    if original is None:
        raise CallError("this aioice has no get_host_addresses, which kpflow.call hooks to offer "
                        "loopback candidates: install the versions of constraints.txt (aioice 0.13)")
    if getattr(original, "kpflow_hook", False):
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _HOST_ADDRESSES.get()
        return list(chosen) if chosen is not None else original(use_ipv4, use_ipv6)

    host_addresses.kpflow_hook = True
    aioice.ice.get_host_addresses = host_addresses


@contextlib.contextmanager
def _offering(addresses: Sequence[str] | None) -> Iterator[None]:
    """Within the block, gathered host candidates are ``addresses`` (None: aioice's choice)."""
    _install_host_address_hook()
    token = _HOST_ADDRESSES.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _candidate_addresses(ice_addresses: Sequence[str] | None, peer_host: str) -> Sequence[str] | None:
    if ice_addresses is not None:
        return ice_addresses
    return ("127.0.0.1",) if is_loopback(peer_host) else None


def _peer_connection(ice_servers: Sequence[str]) -> RTCPeerConnection:
    # An empty list, not None: aiortc's default is Google's public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in ice_servers]))


# --- the link -------------------------------------------------------------------------------------


class WebRTCLink:
    """One end of a call over WebRTC data channels: the :class:`~kpflow.call.link.Link` interface.

    Made by :func:`connect` (the sender) or :meth:`CallServer.accept` (the receiver), not directly.
    ``packets`` holds ``(time.monotonic() at arrival, bytes)``; ``controls`` holds dicts;
    ``closed`` is set when either end closed, the connection failed or the peer vanished, with
    :attr:`close_reason` saying which. :meth:`stats` counts the traffic.
    """

    def __init__(self, pc: RTCPeerConnection, *, heartbeat_interval: float = 0.5,
                 heartbeat_timeout: float = 3.0):
        if not heartbeat_interval > 0 or not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat interval and timeout must be > 0, got {heartbeat_interval} "
                             f"and {heartbeat_timeout}")
        self.packets: asyncio.Queue = asyncio.Queue()
        self.controls: asyncio.Queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._pc = pc
        self._reason = ""
        self._channels: dict[str, object] = {}
        self._ready = asyncio.Event()
        self._hung_up = asyncio.Event()  # the peer's side of the connection is gone
        self._drained = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._pieces: list[bytes] = []
        self._piece_bytes = 0
        self._last_heard = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._shutdown_task: asyncio.Task | None = None
        self._counts = {name: 0 for name in (
            "packets_sent", "packets_received", "packets_dropped", "controls_sent", "controls_received",
            "packet_bytes_sent", "packet_bytes_received", "control_bytes_sent", "control_bytes_received")}
        pc.on("connectionstatechange", self._on_connection_state)

    # -- the Link interface

    @property
    def close_reason(self) -> str:
        """Why the link closed (empty while it is open)."""
        return self._reason

    async def send_packet(self, data: bytes) -> None:
        """Send one datagram on ``keypoints``; dropped when the link is closed or backed up."""
        if len(data) > MAX_PACKET_BYTES:
            raise ValueError(f"packet of {len(data)} bytes is over the {MAX_PACKET_BYTES}-byte limit;"
                             " send large data as a control")
        channel = self._channels.get("keypoints")
        if self.closed.is_set() or channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > PACKET_BACKLOG_BYTES:  # late is lost: never queue behind a jam
            self._counts["packets_dropped"] += 1
            return
        if self._send(channel, bytes(data)):
            self._counts["packets_sent"] += 1
            self._counts["packet_bytes_sent"] += len(data)

    async def send_control(self, message: dict) -> None:
        """Send one control (a JSON-able dict) on ``control``, reliably and in order.

        A large control returns once its last piece is queued; dropped when the link is closed.
        """
        if not isinstance(message, dict):
            raise TypeError(f"a control is a dict, got {type(message).__name__}")
        text = json.dumps(message, separators=(",", ":"))
        data = text.encode()
        if len(data) > MAX_CONTROL_BYTES:
            raise ValueError(f"control of {len(data)} bytes is over the {MAX_CONTROL_BYTES}-byte limit")
        async with self._send_lock:  # one control at a time, so pieces never interleave
            channel = self._channels.get("control")
            if self.closed.is_set() or channel is None:
                return
            if len(data) <= CHUNK_BYTES:
                sent = self._send(channel, text)
            else:
                sent = True
                for start in range(0, len(data), CHUNK_BYTES):
                    await self._wait_drained(channel)
                    end = start + CHUNK_BYTES
                    piece = (_MORE if end < len(data) else _LAST) + data[start:end]
                    if self.closed.is_set() or not self._send(channel, piece):
                        sent = False
                        break
            if sent:
                self._counts["controls_sent"] += 1
                self._counts["control_bytes_sent"] += len(data)

    async def close(self, reason: str = "closed") -> None:
        """End the link: send ``bye`` with ``reason``, wait briefly for the peer to hang up, close."""
        if self._finish(reason):
            channel = self._channels.get("control")
            if channel is not None and self._send(channel, json.dumps({"type": BYE, "reason": reason})):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._hung_up.wait(), BYE_WAIT_S)
        await self._shutdown()

    def stats(self) -> dict:
        """Counts of the traffic so far: packets and controls sent, received and dropped, bytes."""
        return dict(self._counts, open=not self.closed.is_set(), close_reason=self._reason)

    # -- internals

    async def _wait_ready(self) -> None:
        """Return once both channels are open (or raise :class:`CallError` if the link closed first)."""
        done = asyncio.ensure_future(self._ready.wait())
        over = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({done, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            over.cancel()
        if not self._ready.is_set():
            raise CallError(f"the connection closed while opening: {self._reason}")

    def _attach(self, channel) -> None:
        """Take one of the call's data channels (``keypoints`` or ``control``); others are refused."""
        label = channel.label
        if label not in ("keypoints", "control") or label in self._channels:
            log.warning("closing an unexpected data channel %r", label)
            channel.close()
            return
        self._channels[label] = channel
        channel.on("message", self._on_packet if label == "keypoints" else self._on_control)
        channel.on("close", self._on_channel_close)
        if label == "control":
            channel.bufferedAmountLowThreshold = CONTROL_HIGH_WATER // 2
            channel.on("bufferedamountlow", self._drained.set)
        if channel.readyState == "open":
            self._on_open()
        else:
            channel.on("open", self._on_open)

    def _send(self, channel, data: bytes | str) -> bool:
        try:
            channel.send(data)
        except (InvalidStateError, ConnectionError) as e:  # the channel closed under us
            log.debug("send on %s failed: %s", channel.label, e)
            return False
        return True

    async def _wait_drained(self, channel) -> None:
        while channel.bufferedAmount > CONTROL_HIGH_WATER and not self.closed.is_set():
            self._drained.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 0.1)

    def _on_open(self) -> None:
        if self._ready.is_set() or self.closed.is_set():
            return
        if all(label in self._channels and self._channels[label].readyState == "open"
               for label in ("keypoints", "control")):
            self._last_heard = time.monotonic()
            self._ready.set()
            self._spawn(self._heartbeat())

    def _on_packet(self, data) -> None:
        now = time.monotonic()
        self._last_heard = now
        if self.closed.is_set() or not isinstance(data, bytes):
            return
        self._counts["packets_received"] += 1
        self._counts["packet_bytes_received"] += len(data)
        self.packets.put_nowait((now, data))

    def _on_control(self, frame) -> None:
        self._last_heard = time.monotonic()
        if self.closed.is_set():
            return
        if isinstance(frame, str):
            data = frame.encode()
        else:
            self._pieces.append(frame[1:])
            self._piece_bytes += len(frame) - 1
            if self._piece_bytes > MAX_CONTROL_BYTES:
                self._protocol_error(f"a control over {MAX_CONTROL_BYTES} bytes")
                return
            if frame[:1] == _MORE:
                return
            data = b"".join(self._pieces)
            self._pieces, self._piece_bytes = [], 0
        try:
            message = json.loads(data)
        except ValueError as e:
            self._protocol_error(f"a control that is not JSON ({e})")
            return
        if not isinstance(message, dict):
            self._protocol_error(f"a control that is a {type(message).__name__}, not a dict")
            return
        kind = message.get("type")
        if kind == HEARTBEAT:
            return
        if kind == BYE:
            self._hung_up.set()
            self._finish(str(message.get("reason") or "the peer closed the call"))
            self._spawn(self._shutdown())
            return
        self._counts["controls_received"] += 1
        self._counts["control_bytes_received"] += len(data)
        self.controls.put_nowait(message)

    def _protocol_error(self, what: str) -> None:
        self._finish(f"protocol error: the peer sent {what}")
        self._spawn(self._shutdown())

    def _on_channel_close(self) -> None:
        self._hung_up.set()
        if self._finish("the peer closed the connection without a bye"):
            self._spawn(self._shutdown())

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            self._hung_up.set()
            if self._finish(f"connection {state}"):
                self._spawn(self._shutdown())

    async def _heartbeat(self) -> None:
        tick = min(self.heartbeat_interval, self.heartbeat_timeout / 5)
        last_sent = 0.0
        last_tick = time.monotonic()
        beat = json.dumps({"type": HEARTBEAT})
        while not self.closed.is_set():
            now = time.monotonic()
            if now - last_tick > 2 * tick + 0.05:
                # This loop itself was stalled (blocking work on the event loop): what the peer sent
                # meanwhile still waits in the socket, so give it half a timeout to be read.
                self._last_heard = max(self._last_heard, now - self.heartbeat_timeout / 2)
            last_tick = now
            if now - self._last_heard > self.heartbeat_timeout:
                self._finish(f"peer vanished: no heartbeat for {self.heartbeat_timeout:.1f} s")
                self._spawn(self._shutdown())
                return
            if now - last_sent >= self.heartbeat_interval:
                # outside the control lock: a heartbeat may pass between a large control's pieces
                self._send(self._channels["control"], beat)
                last_sent = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed.wait(), tick)

    def _finish(self, reason: str) -> bool:
        """Mark the link closed with ``reason``; False if it already was (the first reason stays)."""
        if self.closed.is_set():
            return False
        self._reason = reason
        self.closed.set()
        log.info("call closed: %s", reason)
        return True

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        """Close the peer connection (once; every caller waits for the same closing)."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._pc.close())
        await asyncio.shield(self._shutdown_task)
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


# --- the sender's side of signalling --------------------------------------------------------------


def _base_url(url: str) -> tuple[str, str]:
    """``(base URL without a trailing slash, host)``, or a :class:`CallError` naming the URL."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallError(f"bad receiver URL {url!r}: expected http://HOST:PORT (what the receiver printed)")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        raise CallError(f"bad receiver URL {url!r}: the port is not a number in 0-65535") from None
    return url.strip().rstrip("/").removesuffix("/offer"), parts.hostname


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


async def _post_offer(base: str, offer: dict, timeout: float) -> dict:
    try:
        async with ClientSession(timeout=ClientTimeout(total=timeout)) as http, \
                http.post(base + "/offer", json=offer) as response:
            body = await response.text()
            status = response.status
    except asyncio.TimeoutError:
        raise CallError(f"the receiver at {base} did not answer within {timeout:g} s") from None
    except (ClientError, OSError) as e:
        reason = getattr(e, "os_error", None) or e
        reason = getattr(reason, "strerror", None) or str(reason) or type(e).__name__
        raise CallError(f"cannot reach the receiver at {base}: {_first_line(reason)}") from None
    if status == 403:
        raise CallError(f"the receiver at {base} refused the call: {_first_line(body)}")
    if status == 409:
        raise CallError(f"the receiver at {base} is busy: {_first_line(body)}")
    if status == 404:
        raise CallError(f"no call at {base}/offer (404): is this the URL the receiver printed?")
    if status != 200:
        raise CallError(f"the receiver at {base} answered {status}: {_first_line(body)}")
    try:
        answer = json.loads(body)
        return {"sdp": str(answer["sdp"]), "type": str(answer["type"])}
    except (ValueError, KeyError, TypeError):
        raise CallError(f"{base}/offer did not answer with a session description: is it a kpflow "
                        "receiver?") from None


async def connect(url: str, token: str, *, timeout: float = 10.0, ice_servers: Sequence[str] = (),
                  ice_addresses: Sequence[str] | None = None, heartbeat_interval: float = 0.5,
                  heartbeat_timeout: float = 3.0) -> WebRTCLink:
    """Call the receiver at ``url`` (``http://HOST:PORT``) with its ``token``; the open link.

    ``timeout`` bounds the HTTP exchange and, again, the opening of the channels. ``ice_servers``
    are ``stun:``/``turn:`` URLs (none by default: enough on loopback and most LANs);
    ``ice_addresses`` the local addresses offered as host candidates (default: ``127.0.0.1`` when
    the receiver is on loopback, else every interface). Raises :class:`CallError` (one line).
    """
    base, host = _base_url(url)
    pc = _peer_connection(ice_servers)
    link = WebRTCLink(pc, heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout)
    link._attach(pc.createDataChannel("keypoints", ordered=False, maxRetransmits=0))
    link._attach(pc.createDataChannel("control"))
    try:
        offer = await pc.createOffer()
        with _offering(_candidate_addresses(ice_addresses, host)):
            await pc.setLocalDescription(offer)  # gathers every candidate: no trickle
        local = pc.localDescription
        answer = await _post_offer(base, {"sdp": local.sdp, "type": local.type, "token": token}, timeout)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        try:
            await asyncio.wait_for(link._wait_ready(), timeout)
        except asyncio.TimeoutError:
            raise CallError(f"no connection to the receiver at {base} within {timeout:g} s (ICE/DTLS did"
                            " not complete: a firewall, or an address the receiver cannot reach?)") from None
    except BaseException:
        await link.close("could not connect")
        raise
    return link


# --- the receiver's side of signalling ------------------------------------------------------------


class CallServer:
    """The receiver's HTTP signalling server: one call at a time, admitted by its token.

    ``app`` is the aiohttp application: add routes to it (a viewer page, ``/stats``, a stream)
    before :meth:`start`. ``POST /offer`` is the call's; :meth:`accept` awaits the next call.
    ``token`` None generates one (``server.token``; show it to the caller). ``port`` 0 picks a free
    port (``server.port``, ``server.url`` after :meth:`start`). ``connect_timeout`` bounds how long
    an answered offer may take to open its channels before the server is free again. The ICE and
    heartbeat options are :func:`connect`'s. Use as ``async with CallServer(...) as server:``.
    """

    def __init__(self, token: str | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ice_servers: Sequence[str] = (), ice_addresses: Sequence[str] | None = None,
                 heartbeat_interval: float = 0.5, heartbeat_timeout: float = 3.0,
                 connect_timeout: float = 10.0):
        if token is not None and not token:
            raise ValueError("the call token must not be empty (None generates one)")
        if not 0 <= int(port) <= 65535:
            raise CallError(f"port {port} is not in 0-65535")
        self.token = token if token is not None else secrets.token_urlsafe(16)
        self.host, self.port = host, int(port)
        self.ice_servers, self.ice_addresses = tuple(ice_servers), ice_addresses
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.app = web.Application()
        self.app.router.add_post("/offer", self._offer)
        self.refused = 0  # offers refused (wrong token, busy, malformed)
        self._link: WebRTCLink | None = None
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (after :meth:`start`); bound to ``0.0.0.0``, give callers the machine's
    own address instead."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def busy(self) -> bool:
        """Whether a call is being set up or is live."""
        return self._link is not None and not self._link.closed.is_set()

    async def start(self) -> CallServer:
        """Listen; :class:`CallError` (one line, naming the port) if it cannot."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            if e.errno == errno.EADDRINUSE:
                raise CallError(f"port {self.port} on {self.host} is in use: pick another port, or 0 "
                                "for a free one") from None
            raise CallError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self.port = int(self._runner.addresses[0][1])
        return self

    async def accept(self) -> WebRTCLink:
        """The next call, once its channels are open."""
        return await self._incoming.get()

    async def stop(self, reason: str = "the receiver stopped") -> None:
        """End the live call (with ``reason``) and stop listening."""
        if self._link is not None:
            await self._link.close(reason)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _refuse(self, status: int, reason: str) -> web.Response:
        self.refused += 1
        log.warning("refused a call (%d): %s", status, reason)
        return web.Response(status=status, text=reason + "\n")

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            offer = await request.json()
            sdp, kind, token = offer["sdp"], offer["type"], offer.get("token")
        except (ValueError, KeyError, TypeError):
            return self._refuse(400, 'malformed offer: expected JSON {"sdp", "type", "token"}')
        if not isinstance(token, str) or not secrets.compare_digest(token.encode(), self.token.encode()):
            return self._refuse(403, "wrong call token: use the token the receiver printed")
        if kind != "offer" or not isinstance(sdp, str):
            return self._refuse(400, f"malformed offer: type is {kind!r}, not 'offer'")
        if self.busy:
            return self._refuse(409, "a call is already in progress: one call at a time")
        pc = _peer_connection(self.ice_servers)
        link = WebRTCLink(pc, heartbeat_interval=self.heartbeat_interval,
                          heartbeat_timeout=self.heartbeat_timeout)
        self._link = link  # taken before any await: a second offer now gets 409
        pc.on("datachannel", link._attach)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await pc.createAnswer()
            with _offering(_candidate_addresses(self.ice_addresses, request.remote or "")):
                await pc.setLocalDescription(answer)
        except Exception as e:  # noqa: BLE001 -- any offer aiortc cannot use is the caller's 400
            await link.close("bad offer")
            self._link = None
            return self._refuse(400, f"unusable offer: {_first_line(str(e)) or type(e).__name__}")
        task = asyncio.ensure_future(self._admit(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        local = pc.localDescription
        return web.json_response({"sdp": local.sdp, "type": local.type})

    async def _admit(self, link: WebRTCLink) -> None:
        try:
            await asyncio.wait_for(link._wait_ready(), self.connect_timeout)
        except (asyncio.TimeoutError, CallError):
            await link.close(f"the caller did not connect within {self.connect_timeout:g} s")
            return
        self._incoming.put_nowait(link)
