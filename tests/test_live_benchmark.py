"""Smoke test of ``benchmarks.live_loop --client browser``: a 3 s run through headless Chromium
with a fake webcam, on a tiny random model built in a temporary folder. Checks that frames come
back and that the JSON it writes has the documented fields; the numbers themselves are not judged."""

import json

import pytest

from benchmarks.browser import CHROMIUM, square_positions

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium; .ci/run installs it)")

SCHEMA = {"device": str, "model": str, "controlnet": str, "client": str, "frame_size": int, "image_size": int,
          "seconds": float, "frames": int, "frames_sent": int, "fps": float, "fps_shown": float,
          "latency_kind": str, "latency_frames": int, "stages_ms": dict, "generated": int, "reused": int,
          "superseded": int, "readout": str}


def test_clip_positions_name_their_frame():
    positions = square_positions(300)
    assert len(set(positions)) == 300  # the square's position identifies the frame within the loop
    assert all(0 <= x <= 448 and 0 <= y <= 448 for x, y in positions)
    with pytest.raises(ValueError):
        square_positions(29 * 29 + 1)


def test_browser_benchmark_smoke(tmp_path):
    from benchmarks import live_loop
    from sdxs_core.presets import ASSETS
    from sdxs_core.hub import ModelHub

    outputs = tmp_path / "outputs"  # a fresh clone's outputs/, kept out of the repo
    hub = ModelHub(search_dirs=[outputs, ASSETS], device="cpu", outputs=outputs)
    hub.start(hub.default_model())  # what `python app.py` opens with
    report = live_loop.measure_browser(hub, seconds=3, warmup_s=1, clip_s=3)
    out = tmp_path / "live_loop.json"
    live_loop.write_report(report, out)
    print(live_loop.table(report))

    saved = json.loads(out.read_text())
    for key, kind in SCHEMA.items():
        assert isinstance(saved[key], kind), (key, saved.get(key))
    assert saved["client"] == "browser"
    assert saved["fps"] > 0 and saved["frames"] > 0 and saved["generated"] > 0
    assert set(saved["stages_ms"]) == set(live_loop.STAGES)
    for key in ("latency_ms_p50", "latency_ms_p95", "server_latency_ms_p50"):
        assert saved[key] is None or saved[key] > 0  # None only when no frame could be matched
    assert "fps" in saved["readout"]


def test_socket_benchmark_streams_every_frame(tmp_path):
    from benchmarks import live_loop
    from sdxs_core.presets import ASSETS
    from sdxs_core.hub import ModelHub

    outputs = tmp_path / "outputs"
    hub = ModelHub(search_dirs=[outputs, ASSETS], device="cpu", outputs=outputs)
    hub.start(hub.default_model())
    report = live_loop.measure_socket(hub, frames=20, warmup=2)
    # every frame is answered: drawn, or (on a busy machine) superseded by a newer one, as a live loop must
    assert report["client"] == "socket" and report["frames"] + report["superseded"] == 20
    assert report["frames"] >= 10 and report["latency_frames"] == report["frames"]
    assert report["generated"] == report["frames"] and report["reused"] == 0  # every frame of the sweep differs
    assert report["fps"] > 0 and report["latency_ms_p95"] >= report["latency_ms_p50"] > 0
    assert set(report["stages_ms"]) == set(live_loop.STAGES)
