"""The live loop: one camera (or sketch) frame in, one generated frame out, per browser session.

What makes a loop feel live, and where each piece sits here:

- only the newest frame is worked on: a frame that arrives while an older one is still being
  generated replaces any frame already waiting, so there is never a backlog;
- a near-identical frame with unchanged settings reuses the last output (a static scene costs
  ~1 ms, not a U-Net call);
- the initial noise is fixed per session and changes only with the seed, so consecutive frames
  of a steady scene stay temporally stable instead of flickering;
- FPS and latency are measured where frames are delivered and shown to the user.

A ``LiveSession`` holds one browser session's state; two sessions never share noise or frames.
"""

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from .control import EXTRACTORS, control_kind, extract
from .errors import SDXSError, check
from .images import ImageLike, to_rgb_array

THUMB_SIDE = 32
# Mean |difference| of two 32x32 grey thumbnails, in 0-255 levels. Each thumbnail pixel averages
# ~250 pixels of a 512x512 frame, so sensor noise and JPEG artefacts stay well below 1 level,
# while a hand moving in front of the camera moves it by several.
STATIC_THRESHOLD = 1.0
STAGES = ("extract_ms", "text_ms", "control_ms", "unet_ms", "decode_ms", "total_ms")


@dataclass(frozen=True)
class LiveParams:
    """Settings that apply from the next frame on; any change forces a fresh generation."""

    prompt: str = ""
    control_type: str = "canny"
    control_scale: float = 0.8
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "control_type", control_kind(self.control_type, "control_type", tuple(EXTRACTORS)))
        check("Control strength", self.control_scale)
        check("Seed", self.seed)


@dataclass
class FrameResult:
    image: np.ndarray  # [S, S, 3] uint8 generated frame, S = the model's native size
    control: np.ndarray  # [S, S, 3] uint8 map the ControlNet saw
    stages_ms: dict[str, float]  # server time per stage of the generation that made `image`
    latency_ms: float  # this frame: arrival -> result, including any wait for the previous frame
    reused: bool  # a static frame: `image` is the previous output
    warnings: list[str] = field(default_factory=list)  # the engine's (e.g. a frame of one flat colour)


@dataclass
class LiveStats:
    fps: float  # delivered frames per second over the last few seconds
    latency_ms: float  # exponential moving average of FrameResult.latency_ms
    frames: int  # delivered (generated + reused)
    generated: int
    reused: int
    superseded: int  # frames dropped unprocessed because a newer one arrived


class RateMeter:
    """Delivered-frame rate over a sliding time window, and a smoothed latency.

    A window of timestamps rather than 1 / last interval: the readout should not jump with every
    frame, yet it should follow a change of load within a couple of seconds.
    """

    def __init__(self, window_s: float = 2.0, smoothing: float = 0.2):
        self.window_s, self.smoothing = window_s, smoothing
        self._times: deque[float] = deque()
        self.latency_ms = 0.0

    def record(self, now: float, latency_ms: float) -> None:
        self._times.append(now)
        while now - self._times[0] > self.window_s:
            self._times.popleft()
        first = not self.latency_ms
        self.latency_ms = latency_ms if first else self.latency_ms + self.smoothing * (latency_ms - self.latency_ms)

    @property
    def fps(self) -> float:
        if len(self._times) < 2 or self._times[-1] == self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


def control_mismatch(trained_on: str, control_type: str) -> str:
    """A notice when the chosen control map is not what the attached ControlNet was trained on
    (a depth map into an edges ControlNet draws, but badly); "" when they agree or it is unknown."""
    if not trained_on or control_type in (trained_on, "none"):
        return ""
    return (f"The attached ControlNet was trained on {trained_on} maps: for {control_type}, "
            f"attach a {control_type} ControlNet in the Models tab.")


def frame_notices(result: "FrameResult", trained_on: str, control_type: str) -> list[str]:
    """What to tell the user beside a live frame: a control map the ControlNet was not trained on,
    then the engine's warnings (a frame of one flat colour)."""
    return [n for n in (control_mismatch(trained_on, control_type), *result.warnings) if n]


def square_frame(image: ImageLike, side: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``side``: the model works at its native square size,
    whatever aspect ratio the camera delivers."""
    rgb = to_rgb_array(image)
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    rgb = rgb[top:top + s, left:left + s]
    if s == side:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA if s > side else cv2.INTER_LINEAR)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


def _engine_state(engine) -> tuple:
    """What else, beyond the frame and LiveParams, decides the output: a model, ControlNet or
    LoRA switched in another tab must not be answered from the cache."""
    return id(engine), id(engine.controlnet), tuple(sorted(engine.loras.items()))


class LiveSession:
    """One browser session of the live loop (also the sketch pad's: strokes are frames too).

    ``process`` may be called from several threads; only the newest waiting frame runs.
    Copying a session (Gradio deep-copies ``gr.State`` values per browser session) gives a fresh
    one, so no two sessions ever share noise, cached frames or counters.
    """

    def __init__(self, static_threshold: float = STATIC_THRESHOLD, fps_window_s: float = 2.0):
        self.static_threshold = static_threshold
        self.noise: torch.Tensor | None = None  # [1, C, S/8, S/8] initial latents for every frame
        self._noise_key: tuple | None = None
        self._last: tuple[tuple, np.ndarray, FrameResult] | None = None  # (signature, thumbnail, result)
        self._meter = RateMeter(fps_window_s)
        self._cond = threading.Condition()
        self._received = 0
        self._busy = False
        self._generated = self._reused = self._superseded = 0

    def __deepcopy__(self, memo):
        return LiveSession(self.static_threshold, self._meter.window_s)

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def last_result(self) -> FrameResult | None:
        return self._last[2] if self._last else None

    def stats(self) -> LiveStats:
        return LiveStats(fps=self._meter.fps, latency_ms=self._meter.latency_ms,
                         frames=self._generated + self._reused, generated=self._generated,
                         reused=self._reused, superseded=self._superseded)

    def process(self, engine, frame: ImageLike, params: LiveParams) -> FrameResult | None:
        """Turn one frame into a generated frame, or return None when a newer frame arrived
        while this one waited (the caller shows nothing new for it).

        A frame already being generated is finished and delivered even if newer frames arrive
        meanwhile: dropping it would starve the output whenever frames come faster than the
        model runs, which on a CPU is always.
        """
        arrived = time.perf_counter()
        with self._cond:
            self._received += 1
            ticket = self._received
            self._cond.notify_all()  # an older waiting frame is now stale: let it go
            while self._busy and ticket == self._received:
                self._cond.wait()
            if ticket != self._received:
                self._superseded += 1
                return None
            self._busy = True
        try:
            return self._run(engine, frame, params, arrived)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def noise_for(self, engine, seed: int, side: int) -> torch.Tensor:
        """The session's fixed initial latents, drawn again only when the seed or shape changes."""
        key = (seed, side, str(engine.device), engine.dtype)
        if key != self._noise_key:
            self.noise = engine.make_noise([seed], side, side)
            self._noise_key = key
        return self.noise

    def _run(self, engine, frame: ImageLike, params: LiveParams, arrived: float) -> FrameResult:
        if engine.controlnet is None:
            raise SDXSError("the live loop needs a ControlNet: pick one in the Models tab "
                            "(or start the app with --controlnet)")
        start = time.perf_counter()
        side = engine.default_size
        rgb = square_frame(frame, side)
        thumb = thumbnail(rgb)
        signature = (params, _engine_state(engine))
        last = self._last
        if last and last[0] == signature and float(np.abs(thumb - last[1]).mean()) < self.static_threshold:
            self._reused += 1
            return self._deliver(FrameResult(last[2].image, last[2].control, last[2].stages_ms,
                                             latency_ms=0.0, reused=True, warnings=last[2].warnings), arrived)

        control = extract(params.control_type, rgb)
        out = engine.generate(params.prompt, control_image=control.image, control_scale=params.control_scale,
                              noise=self.noise_for(engine, params.seed, side), height=side, width=side,
                              output_type="pt")
        # to 8 bits where the image is (a GPU copies a quarter of the bytes back)
        image = (out.images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        stages = {"extract_ms": control.ms, **asdict(out.timings)}
        stages["total_ms"] = (time.perf_counter() - start) * 1e3  # crop + extract + generate + convert
        result = FrameResult(image, control.image, stages, latency_ms=0.0, reused=False, warnings=out.warnings)
        self._last = (signature, thumb, result)
        self._generated += 1
        return self._deliver(result, arrived)

    def _deliver(self, result: FrameResult, arrived: float) -> FrameResult:
        now = time.perf_counter()
        result.latency_ms = (now - arrived) * 1e3
        self._meter.record(now, result.latency_ms)
        return result
