"""The WebRTC link (kpflow.call.transport) over real loopback connections: traffic, refusals, ends."""

import asyncio
import json
import os
import signal
import sys
import time

import pytest

pytest.importorskip("aiortc", reason="the call extra is not installed: pip install -e .[call]")

from aiohttp import ClientSession, web

from kpflow.call.transport import CHUNK_BYTES, CallError, CallServer, connect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "test-token"


def run(coroutine, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def call(server: CallServer, **options):
    """A connected (sender, receiver) pair of links through ``server``."""
    sender = await connect(server.url, TOKEN, timeout=10, **options)
    receiver = await asyncio.wait_for(server.accept(), 10)
    return sender, receiver


async def drain(queue: asyncio.Queue, count: int, timeout: float = 5.0) -> list:
    """Up to ``count`` items of ``queue``, waiting at most ``timeout`` seconds for the rest."""
    items = []
    try:
        while len(items) < count:
            items.append(await asyncio.wait_for(queue.get(), timeout))
    except asyncio.TimeoutError:
        pass
    return items


def control_of_size(size: int) -> dict:
    """A control whose compact JSON encoding is ``size`` bytes."""
    message = {"type": "pad", "text": ""}
    message["text"] = "p" * (size - len(json.dumps(message, separators=(",", ":"))))
    return message


def assert_one_line(error: BaseException, *parts: str):
    text = str(error)
    assert text and "\n" not in text, text
    for part in parts:
        assert part in text, text


def test_packets_and_controls_both_ways():
    big = {"type": "setup", "source_png": "A" * (2_500_000), "params": list(range(5000))}
    edges = (CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES, 2 * CHUNK_BYTES + 1)

    async def main():
        async with CallServer(TOKEN) as server:
            sender, receiver = await call(server)
            assert server.busy
            for i in range(40):
                await sender.send_packet(b"s%03d" % i)
                await receiver.send_packet(b"r%03d" % i)
                await asyncio.sleep(0.002)
            at_receiver = await drain(receiver.packets, 40)
            at_sender = await drain(sender.packets, 40)

            # controls stay in order around a control far above the SCTP message limit
            await sender.send_control({"type": "first"})
            await sender.send_control(big)
            await sender.send_control({"type": "last", "text": "é ✓"})
            for size in edges:  # one text frame, then the smallest controls sent in pieces
                await sender.send_control(control_of_size(size))
            await receiver.send_control({"type": "keyframe"})
            controls = await drain(receiver.controls, 3 + len(edges), timeout=20)
            back = await drain(sender.controls, 1)
            stats = sender.stats()
            candidates = [line for link in (sender, receiver)
                          for line in link._pc.localDescription.sdp.splitlines() if "candidate:" in line]
            await sender.close()
            return at_receiver, at_sender, controls, back, stats, candidates

    at_receiver, at_sender, controls, back, stats, candidates = run(main())
    # a call on loopback offers loopback candidates only
    assert candidates and all(" 127.0.0.1 " in line for line in candidates), candidates
    # datagrams may be lost in principle; on loopback nearly all arrive, each intact
    for got, prefix in ((at_receiver, b"s"), (at_sender, b"r")):
        payloads = [data for _, data in got]
        assert len(payloads) >= 36 and len(set(payloads)) == len(payloads)
        assert all(data.startswith(prefix) and 0 <= int(data[1:]) < 40 for data in payloads)
        assert all(isinstance(t, float) for t, _ in got)
    assert controls[0] == {"type": "first"}
    assert controls[1] == big
    assert controls[2] == {"type": "last", "text": "é ✓"}
    assert controls[3:] == [control_of_size(size) for size in edges]
    assert back == [{"type": "keyframe"}]
    assert stats["packets_sent"] == 40 and stats["controls_sent"] == 3 + len(edges)
    assert stats["control_bytes_sent"] > len(json.dumps(big, separators=(",", ":")))


def test_refusals_wrong_token_bad_offer_and_wrong_urls():
    async def main():
        async def not_a_receiver(request):
            return web.Response(text="<html>a viewer page</html>")

        server = CallServer(TOKEN)
        server.app.router.add_post("/page/offer", not_a_receiver)
        async with server:
            with pytest.raises(CallError) as not_webrtc:
                await connect(server.url + "/page", TOKEN, timeout=5)
            with pytest.raises(CallError) as wrong:
                await connect(server.url, "not-the-token", timeout=5)
            async with ClientSession() as http:
                async with http.post(server.url + "/offer", data="{not json") as r:
                    malformed = (r.status, await r.text())
                async with http.post(server.url + "/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                    no_token = (r.status, await r.text())
            with pytest.raises(CallError) as not_found:
                await connect(server.url + "/elsewhere", TOKEN, timeout=5)
            refused, busy = server.refused, server.busy
            # the server still takes the right caller
            sender, receiver = await call(server)
            await sender.send_control({"type": "hello"})
            hello = await asyncio.wait_for(receiver.controls.get(), 5)
            await sender.close()
        closed_port = server.port  # nothing listens there any more
        with pytest.raises(CallError) as unreachable:
            await connect(f"http://127.0.0.1:{closed_port}", TOKEN, timeout=5)
        with pytest.raises(CallError) as bad_url:
            await connect("127.0.0.1:8765", TOKEN, timeout=5)
        return wrong.value, malformed, no_token, not_found.value, refused, busy, hello, \
            unreachable.value, bad_url.value, closed_port, not_webrtc.value

    (wrong, malformed, no_token, not_found, refused, busy, hello, unreachable, bad_url, closed_port,
     not_webrtc) = run(main())
    assert_one_line(wrong, "refused the call", "wrong call token")
    assert malformed[0] == 400 and malformed[1].count("\n") == 1
    assert no_token[0] == 403 and "token" in no_token[1]
    assert_one_line(not_found, "404", "/elsewhere/offer")
    assert refused == 3 and not busy
    assert hello == {"type": "hello"}
    assert_one_line(unreachable, "cannot reach the receiver", str(closed_port))
    assert_one_line(bad_url, "bad receiver URL", "127.0.0.1:8765")
    assert_one_line(not_webrtc, "/page/offer", "not answer with a session description")


def test_second_caller_refused_while_busy_then_admitted():
    async def main():
        async with CallServer(TOKEN) as server:
            first, first_end = await call(server)
            with pytest.raises(CallError) as second:
                await connect(server.url, TOKEN, timeout=5)
            still_open = not first.closed.is_set() and not first_end.closed.is_set()
            await first.close("first call over")
            await asyncio.wait_for(first_end.closed.wait(), 5)
            third, third_end = await call(server)  # the slot is free again
            await third.send_packet(b"x")
            _, data = await asyncio.wait_for(third_end.packets.get(), 5)
            await third.close()
            return second.value, still_open, data

    second, still_open, data = run(main())
    assert_one_line(second, "busy", "already in progress")
    assert still_open and data == b"x"


def test_port_in_use_is_one_line():
    async def main():
        async with CallServer(TOKEN) as first:
            with pytest.raises(CallError) as in_use:
                await CallServer(TOKEN, port=first.port).start()
            return first.port, in_use.value

    port, in_use = run(main())
    assert port > 0
    assert_one_line(in_use, f"port {port}", "in use")


def test_extra_routes_and_generated_token():
    async def main():
        server = CallServer(port=0)
        
        async def stats(request):
            return web.json_response({"busy": server.busy})

        server.app.router.add_get("/stats", stats)
        async with server:
            async with ClientSession() as http, http.get(server.url + "/stats") as r:
                stats = await r.json()
            sender = await connect(server.url, server.token, timeout=10)
            receiver = await server.accept()
            await receiver.close()
            await asyncio.wait_for(sender.closed.wait(), 5)
        return server.token, stats

    token, stats = run(main())
    assert len(token) >= 16 and stats == {"busy": False}


def test_clean_close_reaches_the_peer_with_its_reason():
    async def main():
        async with CallServer(TOKEN) as server:
            sender, receiver = await call(server)
            await sender.close("sender: end of video")
            await asyncio.wait_for(receiver.closed.wait(), 5)
            reasons = [sender.close_reason, receiver.close_reason]
            await sender.send_packet(b"after")  # a closed link drops, never raises
            await sender.send_control({"type": "after"})

            sender, receiver = await call(server)
            await receiver.close("receiver: window closed")
            await asyncio.wait_for(sender.closed.wait(), 5)
            return reasons + [receiver.close_reason, sender.close_reason]

    assert run(main()) == ["sender: end of video"] * 2 + ["receiver: window closed"] * 2


def test_silent_peer_is_declared_vanished():
    async def main():
        # the sender beats far less often than the receiver's timeout allows
        async with CallServer(TOKEN, heartbeat_timeout=0.6) as server:
            sender, receiver = await call(server, heartbeat_interval=60.0)
            await asyncio.wait_for(receiver.closed.wait(), 10)
            await sender.close()
            return receiver.close_reason

    assert run(main()) == "peer vanished: no heartbeat for 0.6 s"


def test_beating_peer_is_not_declared_vanished():
    async def main():
        async with CallServer(TOKEN, heartbeat_interval=0.1, heartbeat_timeout=0.6) as server:
            sender, receiver = await call(server, heartbeat_interval=0.1, heartbeat_timeout=0.6)
            await asyncio.sleep(1.5)  # well past the timeout, with no other traffic
            alive = not receiver.closed.is_set() and not sender.closed.is_set()
            await sender.close()
            return alive

    assert run(main())


def test_stalled_event_loop_is_not_a_vanished_peer():
    async def main():
        async with CallServer(TOKEN, heartbeat_interval=0.1, heartbeat_timeout=0.6) as server:
            sender, receiver = await call(server, heartbeat_interval=0.1, heartbeat_timeout=0.6)
            await asyncio.sleep(0.3)
            time.sleep(1.0)  # noqa: ASYNC251 -- blocks both ends' loop (one process) beyond the timeout
            await asyncio.sleep(1.0)
            alive = not receiver.closed.is_set() and not sender.closed.is_set()
            reasons = (sender.close_reason, receiver.close_reason)
            await sender.close()
            return alive, reasons

    alive, reasons = run(main())
    assert alive, reasons


def test_killed_sender_process_is_detected_by_heartbeat():
    """A real vanishing: the sender's process is killed (no bye, no SCTP abort)."""
    child_code = (
        "import asyncio, sys\n"
        "from kpflow.call.transport import connect\n"
        "async def main():\n"
        "    link = await connect(sys.argv[1], sys.argv[2], timeout=20)\n"
        "    print('connected', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")

    async def main():
        async with CallServer(TOKEN, heartbeat_timeout=0.6, connect_timeout=20) as server:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", child_code, server.url, TOKEN, cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                try:
                    receiver = await asyncio.wait_for(server.accept(), 25)
                except asyncio.TimeoutError:
                    child.kill()
                    pytest.fail("the child never connected: " + (await child.stderr.read()).decode()[-2000:])
                child.send_signal(signal.SIGKILL)
                await asyncio.wait_for(receiver.closed.wait(), 10)
            finally:
                if child.returncode is None:
                    child.kill()
                await child.wait()
            return receiver.close_reason

    assert run(main(), timeout=45) == "peer vanished: no heartbeat for 0.6 s"


def test_caller_that_never_connects_frees_the_server():
    async def main():
        from aiortc import RTCConfiguration, RTCPeerConnection

        from kpflow.call.transport import _offering

        async with CallServer(TOKEN, connect_timeout=0.5) as server:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.createDataChannel("control")
            with _offering(["127.0.0.1"]):  # loopback candidates only, as the transport's own calls
                await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer", "token": TOKEN}
            async with ClientSession() as http, http.post(server.url + "/offer", json=offer) as r:
                status = r.status
            await pc.close()  # never applies the answer
            busy_after_answer = server.busy
            for _ in range(100):
                if not server.busy:
                    break
                await asyncio.sleep(0.05)
            return status, busy_after_answer, server.busy

    assert run(main()) == (200, True, False)
