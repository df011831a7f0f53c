r"""The live loop through the real server path: the app launched in-process and fed webcam frames,
either by a real browser (``--client browser``, the default) or by gradio_client (``--client api``).

``--client browser`` measures what a user sees. Headless Chromium opens the Live tab with a fake
webcam playing a clip this benchmark writes (a white square stepping across black, 512x512, 30 fps,
10 s, looped: every frame differs, so none is skipped as static) and streams it exactly as a user's
browser does: the Live tab's client (``sdxs_core/live_client.js``) crops each camera frame to the
model's size and sends it over the app's WebSocket (``sdxs_core.live_socket``). After
``--warmup-seconds``, for ``--seconds``:

- delivered FPS (``fps``): distinct generated frames the page received per second (a
  MutationObserver injected into the page timestamps every new ``src`` of the output ``<img>``).
  A frame whose successor arrives before it has been decoded is never painted: ``fps_shown``
  counts only the frames decoded (``img.decode()`` resolved) before being replaced;
- end-to-end latency, median and p95: from the page grabbing a webcam frame to send (the live
  client's ``canvas.toBlob``, wrapped) to the generated frame made from it being decoded in
  the page. Frames are matched by content: the square's position names the frame within the loop,
  and it is read back from the control map (a Canny map of that very input, which arrives with the
  generated frame). This is JPEG encode + upload + any wait for the frame before it + extraction +
  generation + JPEG encode + download + decode. Frames whose map cannot be matched are left out (``latency_frames`` says how many count);
- server time per stage (median over generated frames) and server latency (frame in -> frame out
  inside the server), recorded in-process around ``LiveSession.process``: the numbers behind the
  page's readout line, unrounded. ``generated`` / ``reused`` / ``superseded`` count the window.

``--client socket`` streams the same kind of frames through the Live tab's WebSocket as its page does
(cropped to the model's size, JPEG, two in flight) from Python: the server path without a browser
(for a GPU box, or to see what the browser costs). Latency: frame sent -> generated frame received.

``--client direct`` runs the server's per-frame work alone, in this process: each frame (decoded and
cropped beforehand, as the socket server does in another thread) through ``LiveSession.process``
one after another. Its FPS is what the server stages allow (the GPU target), and it needs neither
Gradio nor a web server. Latency: frame handed in -> generated frame out.

``--client api`` sends JPEG frames one after another to the ``/live_frame`` endpoint (the same
per-frame function and per-session state) with gradio_client: its latency is client send -> frame
received per call. Each call joins Gradio's queue and opens an event stream afresh (~150-250 ms on a
2-core CPU even for a no-op), which the page's WebSocket does once, so it understates FPS.

Browser, server and model share this machine's CPU, as they would with a browser on the same box.

    python -m benchmarks.live_loop                        # browser, bundled miniature model (tiny random if absent)
    python -m benchmarks.live_loop --client socket --frames 200
    python -m benchmarks.live_loop --client api --frames 50
    python -m benchmarks.live_loop --model PATH --controlnet PATH --device cuda --seconds 30

SDXS-512's architecture with its sketch ControlNet (random weights, ``benchmarks.sdxs512``), 512x512:

    python -m benchmarks.sdxs512 /tmp/sdxs512
    python -m benchmarks.live_loop --client socket --threads 2 --model /tmp/sdxs512/sdxs-512-random \
        --controlnet /tmp/sdxs512/controlnet-sketch-512-random --control-type sketch --frames 12 --warmup 2 \
        --repeats 1 --out benchmarks/results/live_loop_socket_sdxs512.json
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.results_io import write_results
from sdxs_core.gpu import MODES
from sdxs_core.stream import STAGES, LiveSession

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red heart above a blue star on a white background"
CLIP_FPS = 30
LATENCY_KINDS = {
    "browser": "end-to-end in the browser: webcam frame grabbed for sending -> the generated frame made "
               "from it decoded in the page (matched by content)",
    "api": "gradio_client call: frame sent -> generated frame received",
    "socket": "WebSocket client: frame sent -> generated frame received (two in flight, as the page)",
    "direct": "in-process: decoded frame handed to LiveSession.process -> generated frame out (server stages only)",
}


def write_frames(folder: Path, n: int, side: int) -> list[Path]:
    """A white square sweeping across black in ``n`` JPEG frames, far enough apart that none is
    static (each must be generated, as with a moving camera)."""
    paths, square = [], side // 4
    for i in range(n):
        frame = np.zeros((side, side, 3), np.uint8)
        x = (side - square) * (i % 16) // 15
        y = side // 3 if (i // 16) % 2 == 0 else side // 2  # the next sweep's row: consecutive frames differ
        frame[y:y + square, x:x + square] = 255
        path = folder / f"frame-{i:04d}.jpg"
        Image.fromarray(frame).save(path, quality=90)
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def median_stages(stages: list[dict]) -> dict:
    return {s: round(statistics.median(st[s] for st in stages), 1) for s in STAGES} if stages else {}


@contextmanager
def server_log():
    """Every frame result the server delivers, as (perf_counter time, session, FrameResult), recorded
    by wrapping ``LiveSession.process`` for the duration (the app code is not changed)."""
    log, original = [], LiveSession.process

    def process(self, engine, frame, params):
        result = original(self, engine, frame, params)
        if result is not None:
            log.append((time.perf_counter(), self, result))
        return result

    LiveSession.process = process
    try:
        yield log
    finally:
        LiveSession.process = original


def describe(hub, threads: int, frame_size: int, control_type: str, client: str) -> dict:
    from benchmarks.results_io import cpu, gpu

    engine = hub.engine
    return dict(device=(gpu() or {}).get("gpu", cpu()["cpu"]) if engine.device.type == "cuda" else cpu()["cpu"], model=hub.model_key, controlnet=hub.controlnet_key,
                dtype=str(engine.dtype).removeprefix("torch."), graphs=engine.graphs is not None,
                threads=threads, image_size=engine.default_size,
                frame_size=frame_size, control_type=control_type, client=client,
                load_average_1m=round(os.getloadavg()[0], 2))  # other work on this machine skews the numbers


# ---- --client browser ------------------------------------------------------------------------------
def match_latencies(probe: dict, t0: float, t1: float, tolerance: float = 1.0, pair_ms: float = 20.0) -> list[float]:
    """End-to-end ms for each output frame shown in [t0, t1) (page ms) whose input can be found:
    the control map that arrived with it (nearest ``src`` change within ``pair_ms``) gives the
    square's position, and the latest frame sent before with that position is its input."""
    latencies = []
    controls = [c for c in probe["controls"] if c["pos"] is not None]
    captures = [c for c in probe["captures"] if c["pos"] is not None]
    for out in probe["outputs"]:
        if not t0 <= out["t"] < t1 or out["shown"] is None:
            continue
        near = min(controls, key=lambda c: abs(c["t"] - out["t"]), default=None)
        if near is None or abs(near["t"] - out["t"]) > pair_ms:
            continue
        (x, y) = near["pos"]
        sent = [c["t"] for c in captures if c["t"] < out["t"]
                and abs(c["pos"][0] - x) <= tolerance and abs(c["pos"][1] - y) <= tolerance]
        if sent:
            latencies.append(out["shown"] - sent[-1])
    return latencies


def measure_browser(hub, seconds: float = 15.0, warmup_s: float = 3.0, frame_size: int = 512,
                    control_type: str = "canny", clip_s: float = 10.0, threads: int | None = None) -> dict:
    """Stream the fake webcam through Chromium into the app over ``hub`` (loaded, with a
    ControlNet) and measure; returns the report (see the module docstring)."""
    from benchmarks.browser import launch_app, live_page, write_y4m

    with tempfile.TemporaryDirectory() as tmp, server_log() as log, launch_app(hub) as url:
        clip = write_y4m(Path(tmp) / "camera.y4m", side=frame_size, frames=round(clip_s * CLIP_FPS), fps=CLIP_FPS)
        with live_page(url, clip, control_type) as page:
            page.wait_for_function("window.__probe.outputs.length > 0")  # the first generated frame
            time.sleep(warmup_s)
            t0, start = page.evaluate("performance.now()"), time.perf_counter()
            time.sleep(seconds)
            t1, end = page.evaluate("performance.now()"), time.perf_counter()
            probe = page.evaluate("window.__probe")
            readout = page.locator("#live-readout").inner_text()

    window_s = (t1 - t0) / 1e3
    received = [o for o in probe["outputs"] if t0 <= o["t"] < t1]
    shown = [o for o in received if o["shown"] is not None]  # decoded before a newer frame replaced it
    sent = [c for c in probe["captures"] if t0 <= c["t"] < t1]
    results = [(s, r) for t, s, r in log if start <= t < end]
    latencies = match_latencies(probe, t0, t1)
    sessions = {id(s): s for s, _ in results}
    return dict(
        describe(hub, threads or os.cpu_count(), frame_size, control_type, "browser"),
        seconds=round(window_s, 2), frames_sent=len(sent), frames=len(received),
        fps=round(len(received) / window_s, 2), fps_shown=round(len(shown) / window_s, 2),
        latency_ms_p50=percentile(latencies, 50), latency_ms_p95=percentile(latencies, 95),
        latency_kind=LATENCY_KINDS["browser"], latency_frames=len(latencies),
        server_latency_ms_p50=percentile([r.latency_ms for _, r in results if not r.reused], 50),
        stages_ms=median_stages([r.stages_ms for _, r in results if not r.reused]),
        generated=sum(not r.reused for _, r in results), reused=sum(r.reused for _, r in results),
        superseded=sum(s.stats().superseded for s in sessions.values()),  # over the whole run, warm-up included
        sessions=len(sessions), readout=" ".join(readout.split()),
    )


# ---- --client api ----------------------------------------------------------------------------------
def measure_api(hub, frames: int = 50, warmup: int = 3, frame_size: int = 512, control_type: str = "canny",
                threads: int | None = None) -> dict:
    """Send ``warmup`` + ``frames`` frames one at a time to ``/live_frame`` with gradio_client."""
    from gradio_client import Client, handle_file

    from benchmarks.browser import launch_app

    with launch_app(hub) as url, tempfile.TemporaryDirectory() as tmp:
        client = Client(url, verbose=False)
        paths = write_frames(Path(tmp), warmup + frames, frame_size)
        latencies, server_latencies, stages, reused = [], [], [], 0
        start = time.perf_counter()
        for i, path in enumerate(paths):
            if i == warmup:
                start = time.perf_counter()  # the timed run starts after the warm-up frames
            t = time.perf_counter()
            *_, info = client.predict(handle_file(str(path)), PROMPT, control_type, 0.8, 0, api_name="/live_frame")
            if i >= warmup:
                latencies.append((time.perf_counter() - t) * 1e3)
                server_latencies.append(info["latency_ms"])
                reused += info["frame_reused"]
                if not info["frame_reused"]:
                    stages.append(info["stages_ms"])
        elapsed = time.perf_counter() - start
    return dict(
        describe(hub, threads or os.cpu_count(), frame_size, control_type, "api"),
        seconds=round(elapsed, 2), frames_sent=frames, frames=frames, fps=round(frames / elapsed, 2),
        latency_ms_p50=percentile(latencies, 50), latency_ms_p95=percentile(latencies, 95),
        latency_kind=LATENCY_KINDS["api"], latency_frames=len(latencies),
        server_latency_ms_p50=percentile(server_latencies, 50), stages_ms=median_stages(stages),
        generated=frames - reused, reused=reused,
    )


# ---- --client socket -------------------------------------------------------------------------------
def measure_socket(hub, frames: int = 200, warmup: int = 10, frame_size: int = 512, control_type: str = "canny",
                   threads: int | None = None) -> dict:
    """Stream ``warmup`` + ``frames`` frames through the Live tab's WebSocket as its page does (each
    frame cropped to the model's size, JPEG, at most ``max_in_flight`` unanswered), without a browser."""
    from websockets.sync.client import connect

    from benchmarks.browser import launch_app
    from sdxs_core.live_socket import LIVE_PATH, encode_jpeg, pack, unpack
    from sdxs_core.stream import square_frame

    with launch_app(hub) as url, tempfile.TemporaryDirectory() as tmp:
        paths = write_frames(Path(tmp), warmup + frames, frame_size)
        with connect(url.replace("http://", "ws://").rstrip("/") + LIVE_PATH, max_size=None) as ws:
            hello = json.loads(ws.recv())
            side = hello["size"]
            jpegs = [encode_jpeg(square_frame(Image.open(p), side)) for p in paths]  # cropped as the page does
            sent, replies = {}, []
            settings = {"prompt": PROMPT, "control_type": control_type, "strength": 0.8, "seed": 0}

            def send(i):
                sent[i] = time.perf_counter()
                ws.send(pack({"id": i, **settings}, jpegs[i]))

            for i in range(min(hello["max_in_flight"], len(jpegs))):
                send(i)
            nxt, start = len(sent), None
            while len(replies) < len(jpegs):
                message = ws.recv()
                now = time.perf_counter()
                header = json.loads(message) if isinstance(message, str) else unpack(message)[0]
                if header.get("type") == "error":
                    raise RuntimeError(f"the server refused frame {header.get('id')}: {header['message']}")
                replies.append((now, now - sent[header["id"]], header))
                if len(replies) == warmup:
                    start = now  # the timed run starts after the warm-up frames
                if nxt < len(jpegs):
                    send(nxt)
                    nxt += 1
    timed = [(t, lat, h) for t, lat, h in replies[warmup:] if h["type"] == "frame"]
    elapsed = replies[-1][0] - (start or replies[0][0])
    generated = [h for _, _, h in timed if not h["reused"]]
    latencies = [lat * 1e3 for _, lat, _ in timed]
    return dict(
        describe(hub, threads or os.cpu_count(), frame_size, control_type, "socket"),
        seconds=round(elapsed, 2), frames_sent=frames, frames=len(timed), fps=round(len(timed) / elapsed, 2),
        latency_ms_p50=percentile(latencies, 50), latency_ms_p95=percentile(latencies, 95),
        latency_kind=LATENCY_KINDS["socket"], latency_frames=len(latencies),
        server_latency_ms_p50=percentile([h["latency_ms"] for h in generated], 50),
        stages_ms=median_stages([h["stages_ms"] for h in generated]),
        generated=len(generated), reused=len(timed) - len(generated),
        superseded=sum(h["type"] == "dropped" for _, _, h in replies[warmup:]),
    )


def measure_direct(hub, frames: int = 200, warmup: int = 10, frame_size: int = 512, control_type: str = "canny",
                   threads: int | None = None) -> dict:
    """``warmup`` + ``frames`` frames through one ``LiveSession`` in this thread, back to back: the
    server stages (extract, ControlNet, U-Net, decode) without transport, JPEG or a browser."""
    from sdxs_core.stream import LiveParams, square_frame

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_frames(Path(tmp), warmup + frames, frame_size)
        side = hub.engine.default_size
        rgbs = [square_frame(Image.open(p), side) for p in paths]
    session, params = LiveSession(static_threshold=0.0), LiveParams(PROMPT, control_type, 0.8, 0)
    results = []
    with hub.using() as engine:
        for i, rgb in enumerate(rgbs):
            if i == warmup:
                start = time.perf_counter()
            results.append(session.process(engine, rgb, params))
        elapsed = time.perf_counter() - start
    timed = results[warmup:]
    latencies = [r.latency_ms for r in timed]
    return dict(
        describe(hub, threads or os.cpu_count(), frame_size, control_type, "direct"),
        seconds=round(elapsed, 2), frames_sent=frames, frames=len(timed), fps=round(len(timed) / elapsed, 2),
        latency_ms_p50=percentile(latencies, 50), latency_ms_p95=percentile(latencies, 95),
        latency_kind=LATENCY_KINDS["direct"], latency_frames=len(latencies),
        server_latency_ms_p50=percentile(latencies, 50), stages_ms=median_stages([r.stages_ms for r in timed]),
        generated=sum(not r.reused for r in timed), reused=sum(r.reused for r in timed), superseded=0,
    )


# ---- output ----------------------------------------------------------------------------------------
def table(report: dict) -> str:
    def ms(v):
        return "n/a" if v is None else f"{v:.0f} ms"

    stages = report["stages_ms"]
    head = (f"{report['model']} + {report['controlnet']} on {report['device']}, {report['dtype']}, "
            f"{report['frame_size']}px frames -> {report['image_size']}px, client {report['client']}: "
            f"{report['frames']} frames in {report['seconds']} s ({report['generated']} generated, "
            f"{report['reused']} static reused), {report['threads']} threads"
            + (f"; first row: medians of {report['repeats']} launches" if report.get("repeats") else "") + "\n\n")
    shown = report.get("fps_shown")
    rows = ["| delivered fps | shown fps | latency p50 | latency p95 | server latency p50 | "
            + " | ".join(s.removesuffix("_ms") for s in STAGES) + " |",
            "|---:" * (5 + len(STAGES)) + "|",
            f"| {report['fps']:.1f} | {'n/a' if shown is None else f'{shown:.1f}'} | "
            f"{ms(report['latency_ms_p50'])} | {ms(report['latency_ms_p95'])} | "
            f"{ms(report['server_latency_ms_p50'])} | "
            + " | ".join(f"{stages.get(s, float('nan')):.1f}" for s in STAGES) + " |"]
    for i, run in enumerate(report.get("runs", []), 1):
        shown_i = "n/a" if run["fps_shown"] is None else f"{run['fps_shown']:.1f}"
        rows.append(f"| run {i}: {run['fps']:.1f} | {shown_i} | {ms(run['latency_ms_p50'])} | "
                    f"{ms(run['latency_ms_p95'])} | {ms(run['server_latency_ms_p50'])} |" + " |" * len(STAGES))
    return head + "\n".join(rows) + (f"\n\n(shown: decoded in the page before the next frame replaced it; "
                                     f"latency: {report['latency_kind']}, {report['latency_frames']} frames; "
                                     "server latency: frame in -> frame out in the server; stages: server ms, "
                                     "median over generated frames)")


RUN_KEYS = ("fps", "fps_shown", "latency_ms_p50", "latency_ms_p95", "server_latency_ms_p50")


def combine_runs(reports: list[dict]) -> dict:
    """Several launches of the same measurement as one report: the run with the median FPS gives
    the details (stages, counts), the headline figures are medians over the runs, and ``runs``
    keeps each run's figures. On a shared 2-core CPU one launch can differ from the next by 2 FPS."""
    if len(reports) == 1:
        return reports[0]
    middle = sorted(reports, key=lambda r: r["fps"])[len(reports) // 2]
    median = {k: round(statistics.median(r[k] for r in reports if r.get(k) is not None), 1)
              if any(r.get(k) is not None for r in reports) else None for k in RUN_KEYS}
    return {**middle, **median, "repeats": len(reports), "runs": [{k: r.get(k) for k in RUN_KEYS} for r in reports]}


def write_report(report: dict, path: Path) -> None:
    """Write ``report`` through ``benchmarks.results_io`` (atomic, with its meta block)."""
    write_results(path, report)


OUT_FILES = {"browser": "live_loop.json", "socket": "live_loop_socket.json", "api": "live_loop_api.json",
             "direct": "live_loop_direct.json"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=("browser", "socket", "api", "direct"), default="browser",
                        help="browser: headless Chromium with a fake webcam (what a user sees); socket: the "
                             "Live tab's WebSocket without a browser; api: gradio_client calls to /live_frame; "
                             "direct: the server's per-frame work alone, in-process (no Gradio needed)")
    parser.add_argument("--model", default=None, help="preset or folder (default: what the app opens with)")
    parser.add_argument("--controlnet", default=None, help="ControlNet (default: the first local one that fits)")
    parser.add_argument("--seconds", type=float, default=15.0, help="browser: measured seconds")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="browser: unmeasured seconds first")
    parser.add_argument("--frames", type=int, default=None,
                        help="socket / direct / api: timed frames, after --warmup untimed ones (default 200 / 50)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="socket / direct / api: untimed frames first (default 10 / 3)")
    parser.add_argument("--frame-size", type=int, default=512, help="side of the square input frames (as a webcam "
                                                                    "asked for 512x512 sends)")
    parser.add_argument("--control-type", default="canny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="launches of the whole measurement; headline figures are medians over them")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: as app.py, every core but one)")
    parser.add_argument("--eager", action="store_true", help="no traced one-step graphs (app.py --eager)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"), help="as app.py --backend")
    parser.add_argument("--precision", default="auto", help="as app.py --precision (openvino)")
    parser.add_argument("--cache-dir", default=None, help="openvino's converted models")
    parser.add_argument("--compile", default=None, choices=MODES,
                        help="as app.py --compile (GPU only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/live_loop.json (browser), live_loop_socket.json (socket), "
                             "live_loop_api.json (api), live_loop_direct.json (direct)")
    args = parser.parse_args(argv)
    if ((args.frames is not None and args.frames < 2) or (args.warmup or 0) < 0 or args.seconds <= 0
            or args.warmup_seconds < 0 or args.repeats < 1):
        parser.error("--frames must be >= 2, --seconds > 0, --repeats >= 1, --warmup and --warmup-seconds >= 0")

    import torch

    from sdxs_core.devices import serving_threads
    from sdxs_core.hub import ModelHub

    args.threads = args.threads or serving_threads()
    torch.set_num_threads(args.threads)
    hub = ModelHub(device=args.device, dtype=args.dtype, graphs=False if args.eager else None, backend=args.backend,
                   precision=args.precision, cache_dir=args.cache_dir, compile=args.compile)
    print(hub.start(args.model or hub.default_model(), controlnet=args.controlnet).replace("**", ""))
    if hub.engine is None or hub.engine.controlnet is None:
        parser.error("the live loop needs a model with a ControlNet: pass --controlnet")
    reports = []
    for _ in range(args.repeats):
        if args.client == "browser":
            reports.append(measure_browser(hub, args.seconds, args.warmup_seconds, args.frame_size,
                                           args.control_type, threads=args.threads))
        elif args.client in ("socket", "direct"):
            measure = measure_socket if args.client == "socket" else measure_direct
            reports.append(measure(hub, args.frames or 200, 10 if args.warmup is None else args.warmup,
                                   args.frame_size, args.control_type, threads=args.threads))
        else:
            reports.append(measure_api(hub, args.frames or 50, 3 if args.warmup is None else args.warmup,
                                       args.frame_size, args.control_type, threads=args.threads))
        print(f"run {len(reports)}/{args.repeats}: {reports[-1]['fps']:.1f} fps, "
              f"p95 {reports[-1]['latency_ms_p95']} ms", flush=True)
    report = combine_runs(reports)
    print("\n" + table(report))
    report["backend"] = hub.engine.backend_label
    report["compile"] = args.compile
    out = args.out or RESULTS / OUT_FILES[args.client]
    write_report(report, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
