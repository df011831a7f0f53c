"""The live loop's transport: webcam frames in and generated frames out over one WebSocket per
browser tab, served beside the Gradio app (``sdxs_core/live_client.js`` is the browser half).

Why not Gradio's own ``.stream()``: through it every frame costs the page a camera-sized canvas
JPEG, an upload through the queue, a Svelte update and two file downloads (output and control
map). On a 2-core CPU that was ~150 ms and about a core of browser time around a 33 ms generation.
Here the page sends the frame at the model's own size and gets the output and the control map
back in one binary message.

Wire format. Binary messages, both ways, are ``[u32 little-endian n][n bytes of JSON header][payload]``.

- client -> server, one per frame: header ``{"id", "prompt", "control_type", "strength", "seed"}``;
  payload: one JPEG / PNG / WebP frame of any size (centre-cropped and resized to the model's).
- server -> client: on connect a text message ``{"type": "hello", "size", "model", "controlnet",
  "trained_on", "max_in_flight"}``; then for each frame one of
  * binary, header ``{"type": "frame", "id", "size", "image_bytes", "control_bytes", "reused", "latency_ms",
    "stages_ms", "stats", "control_type", "notice"}``, payload the output JPEG then the control-map JPEG
    (``size``: the model's side now; the client sends frames at that size, so a model switched in the
    Models tab is followed);
  * text ``{"type": "dropped", "id"}``: a newer frame of this connection superseded it;
  * text ``{"type": "error", "id", "message"}``: a bad frame or setting; the stream goes on.
  * text ``{"type": "ping"}`` every few seconds of silence (the heartbeat): a dead connection shows
    up as a failed send, and the page knows the server is there; no answer is needed.
- Refused connections are closed with code 1013 (try again later: every live slot is busy, or this
  stream's turn is over while another user waits) or 1008 (a page from another origin).
- An idle stream (no frame for ``LiveGate.idle_s``, nothing generating) is closed with code 4000 and
  its slot goes to the next user: an open but silent socket (a page in the background, a paused
  client, a script) cannot hold the Live tab. The browser client pauses when its tab is hidden and
  reconnects when it is shown again.

Each connection owns one ``LiveSession`` (noise, last frame, counters), so two tabs never see each
other's frames. The client keeps at most ``max_in_flight`` frames unanswered, so there is never a
backlog; the server also drops frames beyond that, whoever sends them.
"""

import asyncio
import io
import json
import logging
import math
import struct
import threading
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .errors import SDXSError, check
from .stream import STATIC_THRESHOLD, LiveParams, LiveSession, frame_notices

log = logging.getLogger(__name__)

LIVE_PATH = "/sdxs/live"
SKETCH_PATH = "/sdxs/sketch"  # the Sketch tab's pad: the same protocol, its drawing sent as the control map
CLIENT_JS = Path(__file__).with_name("live_client.js")
SKETCH_JS = Path(__file__).with_name("sketch_client.js")
MAX_IN_FLIGHT = 2  # one frame generating, one waiting: the server is never idle, the wait never grows
MAX_FRAME_BYTES = 8 << 20
MAX_HEADER_BYTES = 64 << 10
MAX_FRAME_SIDE = 4096  # px; checked before decoding, so a crafted file cannot blow up memory
JPEG_QUALITY = 90
CLOSE_TRY_AGAIN, CLOSE_POLICY, CLOSE_IDLE = 1013, 1008, 4000


class FrameError(ValueError):
    """A frame message that cannot be used; the message says why, for the page to show."""


def pack(header: dict, *payloads: bytes) -> bytes:
    """One binary message: the JSON header's length, the header, then the payloads back to back."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(payloads)


def unpack(message: bytes) -> tuple[dict, bytes]:
    """The header and payload of a binary message; ``FrameError`` when it is malformed."""
    if len(message) > MAX_FRAME_BYTES:
        raise FrameError(f"frame message of {len(message) >> 20} MiB is over the {MAX_FRAME_BYTES >> 20} MiB limit")
    if len(message) < 4:
        raise FrameError("frame message too short: expected [u32 header length][JSON header][image]")
    (n,) = struct.unpack_from("<I", message)
    if n > MAX_HEADER_BYTES or 4 + n > len(message):
        raise FrameError(f"frame header length {n} does not fit the {len(message)}-byte message")
    try:
        header = json.loads(message[4:4 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    return header, message[4 + n:]


def frame_params(header: dict) -> LiveParams:
    """The settings a frame carries, validated as the Gradio controls' values are."""
    try:
        strength = check("Control strength", header.get("strength", 0.8), text=True)
        seed = check("Seed", header.get("seed", 0), text=True)  # JavaScript numbers: 3.0 is the integer 3
        prompt = header.get("prompt", "")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
        return LiveParams(prompt, str(header.get("control_type", "canny")), strength, seed)
    except (TypeError, ValueError) as e:
        raise FrameError(str(e)) from None


def decode_frame(payload: bytes) -> np.ndarray:
    """An encoded picture -> ``[H, W, 3] uint8`` RGB; its size is read from the file's header first."""
    if not payload:
        raise FrameError("the frame message carries no image")
    try:
        with Image.open(io.BytesIO(payload)) as probe:
            w, h = probe.size
    except Exception:
        raise FrameError("the frame is not an image the server can read (send JPEG, PNG or WebP)") from None
    if max(w, h) > MAX_FRAME_SIDE:
        raise FrameError(f"frame is {w}x{h}; the largest side accepted is {MAX_FRAME_SIDE} px")
    bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameError("the frame could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise SDXSError("JPEG encoding of a generated frame failed")
    return buf.tobytes()


def same_origin(headers) -> bool:
    """A browser page of this server (or a client that is not a browser: no Origin header). Another
    site's page must not be able to drive a visitor's local server through their browser."""
    origin = headers.get("origin")
    if not origin:
        return True
    hosts = {headers.get("host"), headers.get("x-forwarded-host")}  # a share link's proxy forwards the host
    return urlsplit(origin).netloc in hosts


class LiveGate:
    """At most ``slots`` live streams at once. A stream keeps its slot while nobody else waits;
    once a newcomer has been turned away, streams older than ``turn_s`` are ended, so the newcomer
    gets in on a retry: a second user is served, never blocked forever. A stream that sends no
    frame for ``idle_s`` loses its slot whether or not anyone waits; ``heartbeat_s`` is how often
    an idle connection is checked and pinged."""

    def __init__(self, slots: int = 2, turn_s: float = 300.0, waiting_window_s: float = 10.0,
                 idle_s: float = 10.0, heartbeat_s: float | None = None):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        self.slots, self.turn_s, self.waiting_window_s = slots, turn_s, waiting_window_s
        self.idle_s = idle_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else min(3.0, idle_s / 4)
        self._started: dict[int, float] = {}
        self._next = 0
        self._refused_at = -math.inf
        self._lock = threading.Lock()

    def enter(self, now: float | None = None) -> int | None:
        """A ticket for a new stream, or None when every slot is taken (the refusal is remembered)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._started) >= self.slots:
                self._refused_at = now
                return None
            self._next += 1
            self._started[self._next] = now
            return self._next

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._started.pop(ticket, None)

    def turn_over(self, ticket: int, now: float | None = None) -> bool:
        """True when this stream has had ``turn_s`` and someone was turned away recently."""
        now = time.monotonic() if now is None else now
        with self._lock:
            started = self._started.get(ticket, now)
            return now - started >= self.turn_s and now - self._refused_at <= self.waiting_window_s

    @property
    def active(self) -> int:
        return len(self._started)


class LiveConnection:
    """One WebSocket's stream: reads frames, runs each through this connection's ``LiveSession``
    in a worker thread, sends results (or drops / errors) back tagged with the frame's id."""

    def __init__(self, hub, websocket: WebSocket, gate: LiveGate, ticket: int,
                 static_threshold: float = STATIC_THRESHOLD):
        self.hub, self.ws, self.gate, self.ticket = hub, websocket, gate, ticket
        self.session = LiveSession(static_threshold)
        self.pending: set[asyncio.Task] = set()
        self.last_active = time.monotonic()  # the newest frame received or answered

    def hello(self) -> dict:
        engine = self.hub.engine
        return {"type": "hello", "size": engine.default_size if engine else 0, "model": self.hub.model_key,
                "controlnet": self.hub.controlnet_key, "trained_on": self.hub.controlnet_control,
                "max_in_flight": MAX_IN_FLIGHT}

    async def run(self) -> None:
        """Read frames until the page leaves, its turn is over or it idles (the heartbeat's check)."""
        await self.ws.send_text(json.dumps(self.hello()))
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a disconnect surfaces here
        finally:
            for task in tasks + list(self.pending):
                task.cancel()

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self.gate.turn_over(self.ticket):
                await self.ws.close(CLOSE_TRY_AGAIN, "your live turn is over: another user is waiting; "
                                                     "press Start to queue again")
                return
            if message.get("bytes") is not None:
                self.last_active = time.monotonic()
            self.receive(message)

    async def _heartbeat(self) -> None:
        """Ping while quiet; close an idle stream (no frame for ``idle_s`` and none generating) when
        its idle time runs out, not at the next ping after it: a waiting user gets in after ``idle_s``."""
        while True:
            left = self.gate.idle_s - (time.monotonic() - self.last_active)
            await asyncio.sleep(max(0.01, min(self.gate.heartbeat_s, left)))
            if self.pending:
                self.last_active = time.monotonic()
                continue
            idle = time.monotonic() - self.last_active
            if idle >= self.gate.idle_s:
                await self._quietly(self.ws.close(CLOSE_IDLE, f"no frame for {self.gate.idle_s:g} s: the live "
                                                              "slot was released; start again to reconnect"))
                return
            await self.ws.send_text('{"type":"ping"}')

    def receive(self, message: dict) -> None:
        data = message.get("bytes")
        if data is None:
            self.send_later({"type": "error", "id": None,
                             "message": "frames are binary messages: [u32 header length][JSON header][image]"})
            return
        frame_id = None
        try:
            header, payload = unpack(data)
            frame_id = header.get("id")
            params = frame_params(header)
        except FrameError as e:
            self.send_later({"type": "error", "id": frame_id, "message": str(e)})
            return
        if len(self.pending) >= MAX_IN_FLIGHT:
            self.send_later({"type": "dropped", "id": frame_id})
            return
        task = asyncio.create_task(self.handle(frame_id, params, payload))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def send_later(self, reply: dict) -> None:
        task = asyncio.create_task(self._send_text(reply))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a closed socket is not an error here

    async def _send_text(self, reply: dict) -> None:
        await self.ws.send_text(json.dumps(reply))

    async def handle(self, frame_id, params: LiveParams, payload: bytes) -> None:
        try:
            message = await run_in_threadpool(self.process, frame_id, params, payload)
        except (SDXSError, ValueError) as e:
            await self._quietly(self._send_text({"type": "error", "id": frame_id, "message": str(e)}))
            return
        except Exception as e:  # a bug, not the user's input: logged, and the frame still answered
            log.exception("live frame %r failed", frame_id)
            why = f"internal error ({type(e).__name__}: {e}); see the server log"
            await self._quietly(self._send_text({"type": "error", "id": frame_id, "message": why}))
            return
        self.last_active = time.monotonic()
        if message is None:  # a newer frame of this connection superseded it while it waited
            await self._quietly(self._send_text({"type": "dropped", "id": frame_id}))
        else:
            await self._quietly(self.ws.send_bytes(message))

    @staticmethod
    async def _quietly(send) -> None:
        try:
            await send
        except (WebSocketDisconnect, RuntimeError):  # the page went away while the frame was generating
            pass

    def process(self, frame_id, params: LiveParams, payload: bytes) -> bytes | None:
        """Decode, generate and encode one frame (in a worker thread): the binary reply, or None."""
        frame = decode_frame(payload)
        with self.hub.using() as engine:
            result = self.session.process(engine, frame, params)
            size = engine.default_size
        if result is None:
            return None
        image, control = encode_jpeg(result.image), encode_jpeg(result.control)
        header = {"type": "frame", "id": frame_id, "size": size,
                  "image_bytes": len(image), "control_bytes": len(control),
                  "reused": result.reused, "latency_ms": round(result.latency_ms, 2),
                  "stages_ms": {k: round(v, 2) for k, v in result.stages_ms.items()},
                  "stats": asdict(self.session.stats()), "control_type": params.control_type,
                  "notice": " ".join(frame_notices(result, self.hub.controlnet_control, params.control_type))}
        return pack(header, image, control)


def live_routes(hub, gate: LiveGate | None = None, path: str = LIVE_PATH,
                static_threshold: float = STATIC_THRESHOLD) -> list[WebSocketRoute]:
    """The routes to serve beside the Gradio app (``launch(app_kwargs={"routes": ...})``).
    ``static_threshold`` 0 generates every frame (a sketch pad sends only changes, and a short new
    stroke must not be answered with the previous image as a webcam's noise would)."""
    gate = gate or LiveGate()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        if not same_origin(websocket.headers):
            await websocket.close(CLOSE_POLICY, "live connections are only accepted from this server's own page")
            return
        ticket = gate.enter()
        if ticket is None:
            await websocket.close(CLOSE_TRY_AGAIN, f"all {gate.slots} live slots are in use; retrying")
            return
        try:
            await LiveConnection(hub, websocket, gate, ticket, static_threshold).run()
        except WebSocketDisconnect:
            pass
        finally:
            gate.leave(ticket)

    return [WebSocketRoute(path, endpoint)]


def client_js() -> str:
    """The browser half, run by the Live tab's ``gr.HTML(js_on_load=...)``."""
    return CLIENT_JS.read_text()


def sketch_js() -> str:
    """The Sketch tab's pad (``SKETCH_PATH``), run by its ``gr.HTML(js_on_load=...)``."""
    return SKETCH_JS.read_text()
