"""The live loop through the real server path: the app launched in-process, webcam-like JPEG frames
sent one after another to its ``/live_frame`` endpoint with gradio_client (the same per-frame
function and per-session state as the browser stream; one frame in flight, never a queue).

Reports what a user gets: delivered FPS, end-to-end latency per frame (client send -> generated frame
received: upload, queue, extraction, generation, JPEG encode, download) as median and p95, and the
server's time per stage (median over generated frames). Client and server share this machine's
CPU, as they would with a browser on the same box. Each gradio_client call joins the queue and
opens an event stream afresh (~150 ms on a 2-core CPU even for a no-op endpoint), which a
browser's webcam stream does once: ``server_latency_ms_p50`` (frame in -> frame out inside the
server) shows how much of the end-to-end latency is the model and how much the transport.

    python -m benchmarks.live_loop                        # bundled miniature model (tiny random if absent)
    python -m benchmarks.live_loop --model PATH --controlnet PATH --frames 100 --device cuda
"""

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sdxs_core.stream import STAGES

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red heart above a blue star on a white background"


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


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="preset or folder (default: what the app opens with)")
    parser.add_argument("--controlnet", default=None, help="ControlNet (default: the first local one that fits)")
    parser.add_argument("--frames", type=int, default=50, help="timed frames, after --warmup untimed ones")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--frame-size", type=int, default=512, help="side of the square input frames (as a webcam "
                                                                    "asked for 512x512 sends)")
    parser.add_argument("--control-type", default="canny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "live_loop.json")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.warmup < 0:
        parser.error("--frames must be >= 2 and --warmup >= 0")

    import torch
    from gradio_client import Client, handle_file

    import app
    from benchmarks.latency import device_name
    from sdxs_core.studio import ModelHub

    torch.set_num_threads(args.threads)
    hub = ModelHub(device=args.device, dtype=args.dtype)
    print(hub.start(args.model or hub.default_model(), controlnet=args.controlnet).replace("**", ""))
    if hub.engine is None or hub.engine.controlnet is None:
        parser.error("the live loop needs a model with a ControlNet: pass --controlnet")
    demo = app.build_demo(hub)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with tempfile.TemporaryDirectory() as tmp:
            frames = write_frames(Path(tmp), args.warmup + args.frames, args.frame_size)
            latencies, server_latencies, stages, reused = [], [], [], 0
            start = time.perf_counter()
            for i, path in enumerate(frames):
                if i == args.warmup:
                    start = time.perf_counter()  # the timed run starts after the warm-up frames
                t0 = time.perf_counter()
                *_, info = client.predict(handle_file(str(path)), PROMPT, args.control_type, 0.8, 0,
                                          api_name="/live_frame")
                if i >= args.warmup:
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    server_latencies.append(info["latency_ms"])
                    reused += info["frame_reused"]
                    if not info["frame_reused"]:
                        stages.append(info["stages_ms"])
            elapsed = time.perf_counter() - start
    finally:
        demo.close()

    engine = hub.engine
    report = dict(
        device=device_name(engine.device), model=hub.model_key, controlnet=hub.controlnet_key,
        dtype=str(engine.dtype).removeprefix("torch."), threads=args.threads, image_size=engine.default_size,
        frame_size=args.frame_size, control_type=args.control_type, frames=args.frames, reused=reused,
        fps=round(args.frames / elapsed, 2),
        latency_ms_p50=round(statistics.median(latencies), 1), latency_ms_p95=round(percentile(latencies, 95), 1),
        server_latency_ms_p50=round(statistics.median(server_latencies), 1),
        stages_ms={s: round(statistics.median(st[s] for st in stages), 1) for s in STAGES} if stages else {},
    )
    print(f"\n{report['model']} + {report['controlnet']} on {report['device']}, {report['dtype']}, "
          f"{args.frame_size}px frames -> {engine.default_size}px, {args.frames} frames "
          f"({reused} static reused), {args.threads} threads\n")
    print("| delivered fps | latency p50 | latency p95 | server latency p50 | "
          + " | ".join(s.removesuffix("_ms") for s in STAGES) + " |")
    print("|---:" * (4 + len(STAGES)) + "|")
    print(f"| {report['fps']:.1f} | {report['latency_ms_p50']:.0f} ms | {report['latency_ms_p95']:.0f} ms | "
          f"{report['server_latency_ms_p50']:.0f} ms | "
          + " | ".join(f"{report['stages_ms'].get(s, float('nan')):.1f}" for s in STAGES) + " |")
    print("\n(latency: client send -> frame received; server latency: frame in -> frame out in the server; "
          "stages: server ms, median over generated frames)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
