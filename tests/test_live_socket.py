"""The live loop's WebSocket transport (``sdxs_core.live_socket``) on the app's tiny model and
ControlNet, driven in-process through Starlette's test client as the browser client drives it."""

import io
import json
import struct
import threading

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sdxs_core import live_socket
from sdxs_core.live_socket import LIVE_PATH, FrameError, LiveGate, frame_params, live_routes, pack, unpack


@pytest.fixture(scope="module")
def hub(tiny_hub):
    assert tiny_hub.engine.controlnet is not None
    return tiny_hub


def client_for(hub, gate=None) -> TestClient:
    return TestClient(Starlette(routes=live_routes(hub, gate or LiveGate(slots=4))))


def jpeg_square(x: int, side: int = 96) -> bytes:
    frame = np.zeros((side, side + 32, 3), np.uint8)  # not square, not the model's size: cropped and resized
    frame[30:70, x + 16:x + 56] = 255
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def frame_message(frame_id, image: bytes, **settings) -> bytes:
    return pack({"id": frame_id, "prompt": "a red heart", "control_type": "canny", "strength": 1.0, "seed": 0,
                 **settings}, image)


def reply(ws):
    """The next reply: (header, output pixels, control pixels) for a frame, (message, None, None) otherwise."""
    message = ws.receive()
    while message.get("text") == '{"type":"ping"}':  # the heartbeat, whenever a test is slow
        message = ws.receive()
    if message.get("text") is not None:
        return json.loads(message["text"]), None, None
    header, payload = unpack(message["bytes"])
    n = header["image_bytes"]
    image = np.asarray(Image.open(io.BytesIO(payload[:n])).convert("RGB"), np.int16)
    control = np.asarray(Image.open(io.BytesIO(payload[n:n + header["control_bytes"]])).convert("RGB"), np.int16)
    return header, image, control


def test_frames_round_trip_and_follow_the_camera(hub):
    with client_for(hub).websocket_connect(LIVE_PATH) as ws:
        hello = json.loads(ws.receive_text())
        side = hub.engine.default_size
        assert hello == {"type": "hello", "size": side, "model": hub.model_key, "controlnet": hub.controlnet_key,
                         "trained_on": hub.controlnet_control, "max_in_flight": live_socket.MAX_IN_FLIGHT}
        ws.send_bytes(frame_message(1, jpeg_square(10)))
        head, a, a_map = reply(ws)
        assert head["type"] == "frame" and head["id"] == 1 and head["size"] == side and not head["reused"]
        assert a.shape == a_map.shape == (side, side, 3)
        assert head["stages_ms"]["unet_ms"] > 0 and head["stats"]["generated"] == 1 and head["control_type"] == "canny"

        ws.send_bytes(frame_message(2, jpeg_square(50)))
        head, b, b_map = reply(ws)
        assert head["id"] == 2 and not head["reused"]
        assert np.abs(b_map - a_map).max() > 100 and np.abs(b - a).max() > 2  # the square moved: so did the output

        ws.send_bytes(frame_message(3, jpeg_square(10)))
        _, a_again, _ = reply(ws)
        assert np.abs(a_again - a).max() <= 2  # fixed noise per session: same frame, same picture
        ws.send_bytes(frame_message(4, jpeg_square(10)))
        head, _, _ = reply(ws)
        assert head["reused"] and head["stats"]["reused"] == 1  # a static frame costs no generation


def test_settings_travel_with_each_frame(hub):
    with client_for(hub).websocket_connect(LIVE_PATH) as ws:
        ws.receive_text()
        ws.send_bytes(frame_message(1, jpeg_square(20)))
        _, canny_out, canny_map = reply(ws)
        ws.send_bytes(frame_message(2, jpeg_square(20), control_type="sketch"))
        head, _, sketch_map = reply(ws)
        assert head["control_type"] == "sketch" and not head["reused"]
        assert np.abs(sketch_map - canny_map).max() > 50
        ws.send_bytes(frame_message(3, jpeg_square(20), seed=7))
        head, seeded, _ = reply(ws)
        assert not head["reused"] and np.abs(seeded - canny_out).max() > 2  # a new seed draws new noise


def test_bad_frames_get_a_specific_error_and_the_stream_goes_on(hub):
    big = io.BytesIO()
    Image.new("L", (live_socket.MAX_FRAME_SIDE + 1, 2)).save(big, "PNG")
    with client_for(hub).websocket_connect(LIVE_PATH) as ws:
        ws.receive_text()
        ws.send_text("hello?")
        assert "binary messages" in json.loads(ws.receive_text())["message"]
        ws.send_bytes(b"\x01\x00")
        assert "too short" in json.loads(ws.receive_text())["message"]
        ws.send_bytes(frame_message(5, b"not an image"))
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and error["id"] == 5 and "JPEG, PNG or WebP" in error["message"]
        ws.send_bytes(frame_message(6, jpeg_square(10), control_type="x-ray"))
        assert "control_type='x-ray': unknown control type" in json.loads(ws.receive_text())["message"]
        ws.send_bytes(frame_message(7, big.getvalue()))
        assert "largest side" in json.loads(ws.receive_text())["message"]
        ws.send_bytes(frame_message(8, jpeg_square(10)))
        head, image, _ = reply(ws)
        assert head["id"] == 8 and image is not None  # still streaming


def test_two_connections_never_share_frames_or_noise(hub):
    client = client_for(hub)
    with client.websocket_connect(LIVE_PATH) as one, client.websocket_connect(LIVE_PATH) as two:
        one.receive_text(), two.receive_text()
        one.send_bytes(frame_message(1, jpeg_square(30)))
        _, first, _ = reply(one)
        one.send_bytes(frame_message(2, jpeg_square(30)))
        assert reply(one)[0]["reused"]
        two.send_bytes(frame_message(1, jpeg_square(30)))
        head, second, _ = reply(two)
        assert not head["reused"] and head["stats"]["frames"] == 1  # one's cached frame is not two's
        assert np.abs(second - first).max() <= 2  # same seed, same frame: same picture, computed afresh


def test_frames_beyond_the_in_flight_limit_are_dropped_not_queued(hub, monkeypatch):
    release, original = threading.Event(), live_socket.LiveSession.process

    def held(self, *args):  # generation waits until the test has seen the extra frames answered
        release.wait(30)
        return original(self, *args)

    monkeypatch.setattr(live_socket.LiveSession, "process", held)
    with client_for(hub).websocket_connect(LIVE_PATH) as ws:
        ws.receive_text()
        for i in range(6):  # a client that ignores max_in_flight
            ws.send_bytes(frame_message(i, jpeg_square(8 * i)))
        dropped = [json.loads(ws.receive_text()) for _ in range(4)]
        assert dropped == [{"type": "dropped", "id": i} for i in range(2, 6)]  # not queued behind the first two
        release.set()
        done = [reply(ws)[0] for _ in range(2)]
        assert sorted(r["id"] for r in done) == [0, 1] and {r["type"] for r in done} == {"frame"}


def test_pages_of_other_sites_are_refused(hub):
    client = client_for(hub)
    with client.websocket_connect(LIVE_PATH, headers={"origin": "http://evil.example"}) as ws:
        with pytest.raises(WebSocketDisconnect) as refused:
            ws.receive_text()
    assert refused.value.code == live_socket.CLOSE_POLICY
    with client.websocket_connect(LIVE_PATH, headers={"origin": "http://testserver"}) as ws:
        assert json.loads(ws.receive_text())["type"] == "hello"  # this server's own page


def test_a_full_server_refuses_with_try_again_and_a_waiting_user_gets_in(hub):
    gate = LiveGate(slots=1, turn_s=0.0)
    client = client_for(hub, gate)
    with client.websocket_connect(LIVE_PATH) as first:
        first.receive_text()
        with client.websocket_connect(LIVE_PATH) as second:
            with pytest.raises(WebSocketDisconnect) as refused:
                second.receive_text()
        assert refused.value.code == live_socket.CLOSE_TRY_AGAIN and "live slots are in use" in refused.value.reason
        first.send_bytes(frame_message(1, jpeg_square(10)))  # its turn is over and someone waited: it is ended
        with pytest.raises(WebSocketDisconnect) as ended:
            first.receive_text()
        assert ended.value.code == live_socket.CLOSE_TRY_AGAIN and "another user is waiting" in ended.value.reason
    with client.websocket_connect(LIVE_PATH) as retry:
        assert json.loads(retry.receive_text())["type"] == "hello"  # the slot was freed
    assert gate.active == 0


def test_idle_streams_lose_their_slot_and_a_waiting_client_gets_in(hub):
    """Two open but silent sockets (background tabs, scripts) cannot hold the Live tab: each is
    pinged, then closed once idle, and a third client that was turned away gets a slot on retry."""
    import time

    gate = LiveGate(slots=2, idle_s=0.6, heartbeat_s=0.15)
    client = client_for(hub, gate)
    with client.websocket_connect(LIVE_PATH) as a, client.websocket_connect(LIVE_PATH) as b:
        a.receive_text(), b.receive_text()
        a.send_bytes(frame_message(1, jpeg_square(10)))  # one frame, then silence
        assert reply(a)[0]["type"] == "frame"
        with client.websocket_connect(LIVE_PATH) as third:
            with pytest.raises(WebSocketDisconnect) as refused:
                third.receive_text()
        assert refused.value.code == live_socket.CLOSE_TRY_AGAIN
        for idle in (a, b):
            messages = []
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:
                    messages.append(idle.receive_text())
            assert closed.value.code == live_socket.CLOSE_IDLE and "slot was released" in closed.value.reason
            assert '{"type":"ping"}' in messages  # the heartbeat ran while it idled
        deadline = time.monotonic() + 30  # only a guard against hanging: the slots are already free
        while gate.active and time.monotonic() < deadline:
            time.sleep(0.05)
        with client.websocket_connect(LIVE_PATH) as third:
            assert json.loads(third.receive_text())["type"] == "hello"


def test_an_idle_stream_is_closed_when_its_idle_time_runs_out_not_at_the_next_ping(hub):
    """With pings a minute apart, a silent stream is still closed after ``idle_s``: the slot's
    release does not wait for the heartbeat (before, it could come up to a heartbeat late)."""
    import time

    client = client_for(hub, LiveGate(slots=1, idle_s=0.5, heartbeat_s=60.0))
    start = time.monotonic()
    with client.websocket_connect(LIVE_PATH) as ws:
        ws.receive_text()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == live_socket.CLOSE_IDLE
    assert time.monotonic() - start < 30  # the first ping would have come at 60 s


def test_gate_turns():
    gate = LiveGate(slots=2, turn_s=100, waiting_window_s=10)
    a, b = gate.enter(now=0), gate.enter(now=50)
    assert a and b and gate.enter(now=60) is None  # full: the refusal at t=60 is remembered
    assert not gate.turn_over(a, now=65)  # someone waits, but a has had only 65 s
    assert gate.turn_over(a, now=105) is False  # 45 s after the refusal: nobody is waiting any more
    assert gate.enter(now=200) is None
    assert gate.turn_over(a, now=205) and not gate.turn_over(b, now=149)
    gate.leave(a)
    assert gate.enter(now=206) is not None


def test_message_format():
    header, payload = unpack(pack({"id": 3, "prompt": "é"}, b"ab", b"cd"))
    assert header == {"id": 3, "prompt": "é"} and payload == b"abcd"
    for bad, why in ((b"\x00\x00", "too short"), (struct.pack("<I", 99) + b"{}", "does not fit"),
                     (struct.pack("<I", 3) + b"{x}", "not JSON"), (struct.pack("<I", 2) + b"[]", "JSON object")):
        with pytest.raises(FrameError, match=why):
            unpack(bad)
    with pytest.raises(FrameError, match="over the"):
        unpack(b"\x00" * (live_socket.MAX_FRAME_BYTES + 1))
    assert frame_params({"prompt": "a", "control_type": "depth", "strength": 0.5, "seed": 3.0}).seed == 3
    for bad in ({"seed": -1}, {"seed": "x"}, {"strength": "strong"}, {"strength": float("nan")}, {"prompt": 5}):
        with pytest.raises(FrameError):
            frame_params(bad)


def test_a_failing_generation_is_answered_and_logged_not_left_hanging(hub, monkeypatch, caplog):
    def broken(self, engine, frame, params):
        raise RuntimeError("boom")

    with client_for(hub).websocket_connect(LIVE_PATH) as ws:
        ws.receive_text()
        monkeypatch.setattr(live_socket.LiveSession, "process", broken)
        ws.send_bytes(frame_message(1, jpeg_square(10)))
        error = json.loads(ws.receive_text())
        assert error["id"] == 1 and "internal error (RuntimeError: boom)" in error["message"]
        assert "live frame 1 failed" in caplog.text
        monkeypatch.undo()
        ws.send_bytes(frame_message(2, jpeg_square(10)))
        assert reply(ws)[0]["type"] == "frame"  # the stream survives


def test_a_sketch_route_generates_every_change(hub):
    """The sketch pad's socket (static threshold 0): a short new stroke is generated, never answered
    with the previous image as a webcam's sensor noise would be."""
    client = TestClient(Starlette(routes=live_routes(hub, LiveGate(slots=2), live_socket.SKETCH_PATH,
                                                     static_threshold=0.0)))
    with client.websocket_connect(live_socket.SKETCH_PATH) as ws:
        ws.receive_text()
        for i in range(2):
            ws.send_bytes(frame_message(i, jpeg_square(10), control_type="none"))
            header, _, _ = reply(ws)
            assert header["type"] == "frame" and header["reused"] is False
