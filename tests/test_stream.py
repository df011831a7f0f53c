"""The live loop's session logic on the app's tiny model and ControlNet (64x64, CPU)."""

import copy
import threading
import time

import numpy as np
import pytest
import torch

from sdxs_core.control import extract
from sdxs_core.errors import SDXSError
from sdxs_core.stream import LiveParams, LiveSession, RateMeter, square_frame


@pytest.fixture(scope="module")
def control_engine(tmp_path_factory):
    from sdxs_core import load_engine
    from sdxs_core.catalogue import ensure_tiny_model

    model, controlnet = ensure_tiny_model(tmp_path_factory.mktemp("outputs"))
    return load_engine(model, controlnet=controlnet, device="cpu")


def square_at(x: int, y: int = 40, side: int = 128) -> np.ndarray:
    """A white square on black at (x, y): a frame whose edges move with x."""
    frame = np.zeros((side, side, 3), np.uint8)
    frame[y:y + 40, x:x + 40] = 255
    return frame


class ProxyEngine:
    """The real engine behind another object (a different engine identity), optionally holding
    every generation at a gate so a test can line frames up behind it."""

    def __init__(self, engine, gated: bool = False):
        self.engine, self.gated = engine, gated
        self.gate, self.entered = threading.Event(), threading.Event()
        self.controls = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, *args, **kwargs):
        self.controls.append(kwargs["control_image"])
        self.entered.set()
        if self.gated:
            assert self.gate.wait(10), "test never opened the gate"
        return self.engine.generate(*args, **kwargs)


PARAMS = LiveParams(prompt="a red circle", control_type="canny", control_scale=1.0, seed=3)


def test_static_frame_reuses_output_until_frame_or_settings_change(control_engine):
    session = LiveSession()
    first = session.process(control_engine, square_at(20), PARAMS)
    assert not first.reused and first.image.dtype == np.uint8 and first.image.shape == (64, 64, 3)

    jitter = np.clip(square_at(20).astype(int) + np.random.default_rng(0).integers(-2, 3, (128, 128, 3)), 0, 255)
    again = session.process(control_engine, jitter.astype(np.uint8), PARAMS)  # sensor noise only
    assert again.reused and np.array_equal(again.image, first.image)

    moved = session.process(control_engine, square_at(60), PARAMS)
    assert not moved.reused and not np.array_equal(moved.image, first.image)

    new_prompt = session.process(control_engine, square_at(60), LiveParams("a blue star", "canny", 1.0, 3))
    assert not new_prompt.reused
    stats = session.stats()
    assert (stats.generated, stats.reused, stats.frames) == (3, 1, 4)


def test_fixed_noise_is_stable_across_frames(control_engine):
    session = LiveSession()
    a1 = session.process(control_engine, square_at(20), PARAMS)
    noise = session.noise.clone()
    session.process(control_engine, square_at(70), PARAMS)
    assert torch.equal(session.noise, noise)
    a2 = session.process(control_engine, square_at(20), PARAMS)  # same frame again, not static vs the last one
    assert not a2.reused and np.array_equal(a1.image, a2.image)


def test_seed_change_draws_new_noise_and_back_again(control_engine):
    session = LiveSession()
    before = session.process(control_engine, square_at(20), PARAMS)
    noise3 = session.noise.clone()
    after = session.process(control_engine, square_at(20), LiveParams(PARAMS.prompt, "canny", 1.0, seed=4))
    assert not torch.equal(session.noise, noise3)
    assert not np.array_equal(before.image, after.image)
    session.process(control_engine, square_at(20), PARAMS)
    assert torch.equal(session.noise, noise3)


def test_sessions_are_isolated(control_engine):
    one = LiveSession()
    first = one.process(control_engine, square_at(20), PARAMS)
    two = copy.deepcopy(one)  # what gr.State does for every new browser session
    assert two.noise is None and two.last_result is None and two.stats().frames == 0

    other = two.process(control_engine, square_at(20), LiveParams(PARAMS.prompt, "canny", 1.0, seed=99))
    assert not other.reused  # one's cached frame is not two's
    assert not np.array_equal(other.image, first.image)
    assert not torch.equal(one.noise, two.noise)
    assert one.stats().frames == 1 and two.stats().frames == 1


def test_switching_engine_or_control_type_is_never_answered_from_cache(control_engine):
    session = LiveSession()
    session.process(control_engine, square_at(20), PARAMS)
    switched = session.process(ProxyEngine(control_engine), square_at(20), PARAMS)
    assert not switched.reused
    sketch = session.process(control_engine, square_at(20), LiveParams(PARAMS.prompt, "sketch", 1.0, 3))
    assert not sketch.reused
    assert not np.array_equal(sketch.control, extract("canny", square_frame(square_at(20), 64)).image)


def test_rate_meter_counts_frames_in_a_sliding_window():
    meter = RateMeter(window_s=1.0, smoothing=0.5)
    assert meter.fps == 0.0
    for i in range(11):
        meter.record(i * 0.1, latency_ms=100.0)
    assert meter.fps == pytest.approx(10.0)
    assert meter.latency_ms == pytest.approx(100.0)
    for i in range(5):  # the load doubles: frames every 0.2 s, 300 ms each
        meter.record(2.0 + i * 0.2, latency_ms=300.0)
    assert meter.fps == pytest.approx(5.0)  # the 10 fps frames left the window
    assert 250.0 < meter.latency_ms < 300.0


def test_session_stats_update_every_frame(control_engine):
    session = LiveSession()
    for x in (10, 30, 50):
        result = session.process(control_engine, square_at(x), PARAMS)
        assert result.latency_ms > 0 and result.stages_ms["unet_ms"] > 0 and result.stages_ms["extract_ms"] >= 0
    stats = session.stats()
    assert stats.frames == 3 and stats.fps > 0 and stats.latency_ms > 0


def test_newest_frame_wins_and_nothing_queues(control_engine):
    engine = ProxyEngine(control_engine, gated=True)
    session = LiveSession()
    results = {}

    def submit(name, x):
        results[name] = session.process(engine, square_at(x), PARAMS)

    def wait_for(n):
        deadline = time.monotonic() + 10
        while session.frames_received < n:
            assert time.monotonic() < deadline
            time.sleep(0.005)

    a = threading.Thread(target=submit, args=("a", 10))
    a.start()
    assert engine.entered.wait(10)  # frame a is being generated
    b = threading.Thread(target=submit, args=("b", 40))
    b.start()
    wait_for(2)  # b waits behind a
    c = threading.Thread(target=submit, args=("c", 80))
    c.start()
    wait_for(3)
    b.join(10)
    assert not b.is_alive() and results["b"] is None  # b gave up as soon as c arrived
    engine.gate.set()
    a.join(10)
    c.join(10)
    assert results["a"] is not None and results["c"] is not None
    assert len(engine.controls) == 2  # a and c ran, b never did
    assert np.array_equal(engine.controls[1], extract("canny", square_frame(square_at(80), 64)).image)
    stats = session.stats()
    assert (stats.generated, stats.superseded) == (2, 1)


def test_live_needs_a_controlnet(tiny_dir):
    from sdxs_core import load_engine

    with pytest.raises(SDXSError, match="ControlNet"):
        LiveSession().process(load_engine(tiny_dir, device="cpu"), square_at(20), PARAMS)


def test_frames_of_any_shape_become_the_model_square():
    wide = np.zeros((480, 640, 3), np.uint8)
    wide[:, 80:560] = 255  # the centre 480x480 is all white, the side bands are cut off
    out = square_frame(wide, 64)
    assert out.shape == (64, 64, 3) and out.min() == 255


@pytest.mark.parametrize("kwargs", [dict(control_type="depthish"), dict(seed=-1), dict(control_scale=float("nan"))])
def test_live_params_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        LiveParams(**kwargs)


def test_a_flat_frame_carries_the_engines_warning(control_engine, tmp_path):
    """A frame that decodes to one colour says so (the page shows it under the FPS readout)."""
    from app import live_readout
    from sdxs_core import load_engine
    from sdxs_core.catalogue import ensure_tiny_model

    black = load_engine(*ensure_tiny_model(tmp_path), device="cpu")
    last = [m for m in black.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-5.0)
    black._networks_changed()
    session = LiveSession()
    result = session.process(black, square_at(10), PARAMS)
    assert not result.image.any() and "one flat colour" in result.warnings[0]
    assert session.process(black, square_at(10), PARAMS).reused  # a reused frame keeps its warning
    assert "⚠️" in live_readout(result, session.stats(), PARAMS) and "flat colour" in live_readout(
        session.process(black, square_at(10), PARAMS), session.stats(), PARAMS)
    assert session.process(control_engine, square_at(12), PARAMS).warnings == []


def test_the_direct_live_benchmark_times_the_server_stages(tiny_hub):
    """``benchmarks.live_loop --client direct`` (the GPU server-stage figure): every frame generated,
    the documented fields filled, no web server involved."""
    from benchmarks import live_loop

    report = live_loop.measure_direct(tiny_hub, frames=6, warmup=1, frame_size=96)
    assert report["client"] == "direct" and report["frames"] == report["generated"] == 6 and report["reused"] == 0
    assert report["fps"] > 0 and report["latency_ms_p95"] >= report["latency_ms_p50"] > 0
    assert set(report["stages_ms"]) == set(live_loop.STAGES) and report["stages_ms"]["unet_ms"] > 0
