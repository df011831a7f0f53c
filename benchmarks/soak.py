"""Soak test of the app as served: many users over a long session, through the API and the live
WebSocket, watching memory, the cache folder, errors and latency.

    python -m benchmarks.soak --minutes 30          # the issue's target run, on the app's default backend
    python -m benchmarks.soak --minutes 1 --switch-s 10 --backend torch --out /tmp/soak.json   # about what CI runs

The app is launched in this process as ``app.py`` sets it up (private Gradio cache with its
janitor, upload limits, live gate), then driven by: ``--clients`` gradio_client threads calling
/generate with 1-8 images and fresh seeds; a switcher that every ``--switch-s`` seconds moves the
LoRA scale (through /set_lora) and switches the ControlNet (through /set_controlnet) from
localhost, as the operator would; two live WebSocket streams sending webcam-like frames. RSS is
sampled once a second; ``rss_mb_after_warmup`` is the median over the minute before ``--warmup-s``
ends (by default the switcher's whole cycle: every LoRA scale with every ControlNet, so every graph
has been traced) and ``rss_mb_end`` the median over the last minute. After the load, the two
streams go silent while a third client keeps retrying: ``idle_slot_reclaimed_s`` is how long it
waited for a slot (the gate's idle timeout bounds it).
"""

import argparse
import io
import json
import random
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.results_io import RESULTS, write_results

ERRORS_KEPT = 20
RSS_WINDOW_S = 60  # samples in each RSS level (see Soak._rss_level)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame(i: int, side: int = 256) -> bytes:
    """A webcam-like JPEG: a white square moving over black."""
    frame = np.zeros((side, side, 3), np.uint8)
    x = (i * 7) % (side - 64)
    frame[96:160, x:x + 64] = 255
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _object_counts() -> dict[str, int]:
    """Live Python objects by type (after a collection): what grows, when RSS does."""
    import collections
    import gc

    gc.collect()
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _growth(before: dict, after: dict, top: int = 15) -> dict[str, int]:
    grown = {k: after[k] - before.get(k, 0) for k in after}
    return dict(sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1])[:top])


def _backend_label(engine) -> str:
    if engine.backend is not None:
        return engine.backend.label
    return "torch graphs" if engine.graphs is not None else "torch eager"


class Soak:
    def __init__(self, url: str, hub, janitor, args):
        self.url, self.hub, self.janitor, self.args = url, hub, janitor, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.live_frames = 0
        self.images_made = 0
        self.switches = 0
        self.rss: list[tuple[float, float]] = []
        self.temp_files_max = 0

    def error(self, where: str, e) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append(f"{where}: {type(e).__name__}: {e}"[:300])

    # ---- the users ------------------------------------------------------------------------------
    def text_client(self, k: int) -> None:
        from gradio_client import Client

        client, rng = Client(self.url, verbose=False), random.Random(k)
        while not self.stop.is_set():
            n = rng.randint(1, 8)
            start = time.perf_counter()
            try:
                gallery, info = client.predict(f"a red heart above a blue star {k}", "none", rng.randrange(2**31),
                                               False, n, api_name="/generate")
                if len(gallery) != n:
                    raise RuntimeError(f"{len(gallery)} images for {n}: {info}")
            except Exception as e:
                self.error("generate", e)
                continue
            with self.lock:
                self.latencies_ms.append((time.perf_counter() - start) * 1e3)
                self.images_made += n

    def switcher(self) -> None:
        """The operator, from localhost: LoRA scale and ControlNet moves every ``switch_s``."""
        from gradio_client import Client

        client = Client(self.url, verbose=False)
        loras = [k for _, k in self.hub.choices("lora")]
        controlnets = [k for _, k in self.hub.choices("controlnet")]
        scales, i = (0.5, 1.0, 0.75), 0
        while not self.stop.wait(self.args.switch_s):
            i += 1
            try:
                if loras:
                    banner, *_ = client.predict(loras[0], scales[i % len(scales)], api_name="/set_lora")
                    if "not loaded" in banner:
                        raise RuntimeError(banner)
                if controlnets:
                    banner, *_ = client.predict(controlnets[i % len(controlnets)], api_name="/set_controlnet")
                    if "attached" not in banner:
                        raise RuntimeError(banner)
                with self.lock:
                    self.switches += 1
            except Exception as e:
                self.error("switch", e)

    def live_stream(self, k: int, idle: threading.Event, connected: threading.Event) -> None:
        """One webcam page: a frame, its answer, the next; silent (but connected) once ``idle`` is set."""
        from websockets.sync.client import connect

        from sdxs_core.live_socket import LIVE_PATH, pack, unpack

        try:
            with connect(self.url.replace("http", "ws").rstrip("/") + LIVE_PATH, max_size=None) as ws:
                json.loads(ws.recv())  # hello
                connected.set()
                i = 0
                while not idle.is_set():
                    ws.send(pack({"id": i, "prompt": "a red heart", "control_type": "canny", "strength": 1.0,
                                  "seed": k}, _frame(i + 40 * k)))
                    while True:
                        message = ws.recv(timeout=120)
                        if isinstance(message, bytes):
                            header, _ = unpack(message)
                            break
                        header = json.loads(message)
                        if header["type"] in ("dropped", "error"):
                            break
                    if header["type"] == "error":
                        self.error("live", RuntimeError(header["message"]))
                    elif header["type"] == "frame":
                        with self.lock:
                            self.live_frames += 1
                    i += 1
                while not self.stop.is_set():  # a background tab: connected, sending nothing
                    try:
                        ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
        except Exception as e:
            if not idle.is_set():
                self.error("live", e)

    def sampler(self) -> None:
        import psutil

        process, start = psutil.Process(), time.monotonic()
        while not self.stop.wait(1.0):
            files = len(self.janitor.files())
            with self.lock:
                self.rss.append((time.monotonic() - start, process.memory_info().rss / 2**20))
                self.temp_files_max = max(self.temp_files_max, files)

    def _rss_level(self) -> float | None:
        """RSS now, as the median of the last ``RSS_WINDOW_S`` one-second samples: a batch of eight in
        flight swings a single sample by ~100 MB, which would decide the growth figure by chance."""
        recent = [r for _, r in self.rss[-RSS_WINDOW_S:]]
        return statistics.median(recent) if recent else None

    def _traces(self) -> int | None:
        """Graphs built so far: torch traces, or OpenVINO networks converted or read from its cache."""
        engine = self.hub.engine
        if engine.backend is not None:
            return len(engine.backend.events)
        return engine.graphs.traces if engine.graphs is not None else None

    # ---- the run ----------------------------------------------------------------------------------
    def idle_reclaim(self, gate) -> float | None:
        """Seconds a third client waited for a slot held by two silent streams (None: it never got one)."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        from sdxs_core.live_socket import LIVE_PATH

        start = time.monotonic()
        while time.monotonic() - start < 6 * gate.idle_s:
            try:
                with connect(self.url.replace("http", "ws").rstrip("/") + LIVE_PATH) as ws:
                    if json.loads(ws.recv(timeout=5))["type"] == "hello":
                        return time.monotonic() - start
            except (ConnectionClosed, TimeoutError, OSError):
                time.sleep(0.2)
        return None

    def run(self, gate) -> dict:
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.switcher, daemon=True),
                   *(threading.Thread(target=self.text_client, args=(k,), daemon=True)
                     for k in range(self.args.clients))]
        idle = threading.Event()
        connected = [threading.Event() for _ in range(2)]
        streams = [threading.Thread(target=self.live_stream, args=(k, idle, connected[k]), daemon=True)
                   for k in range(2)]
        for t in threads + streams:
            t.start()
        seconds = self.args.minutes * 60
        time.sleep(min(self.args.warmup_s, seconds / 2))
        with self.lock:
            rss_warm = self._rss_level()
        traces_warm = self._traces()
        objects_warm = _object_counts() if self.args.objects else None
        time.sleep(max(0.0, seconds - self.args.warmup_s))
        with self.lock:
            rss_end = self._rss_level()
        objects_end = _object_counts() if self.args.objects else None
        idle.set()  # the two streams stay connected but go silent, as background tabs would
        for c in connected:
            c.wait(5)
        reclaimed = self.idle_reclaim(gate)
        self.stop.set()
        for t in threads + streams:
            t.join(timeout=180)
        lat = sorted(self.latencies_ms)
        p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else None
        return {
            "minutes": self.args.minutes, "clients": self.args.clients, "switch_s": self.args.switch_s,
            "model": self.hub.model_key, "backend": _backend_label(self.hub.engine),
            "controlnets": [k for _, k in self.hub.choices("controlnet")],
            "lora": self.hub.lora_key,
            "rss_mb_after_warmup": round(rss_warm, 1) if rss_warm else None,
            "rss_mb_end": round(rss_end, 1) if rss_end else None,
            "rss_growth_pct": round(100 * (rss_end / rss_warm - 1), 2) if rss_warm and rss_end else None,
            "rss_window_s": RSS_WINDOW_S,
            "rss_mb_max": round(max(r for _, r in self.rss), 1) if self.rss else None,
            "temp_files_max": self.temp_files_max, "temp_files_end": len(self.janitor.files()),
            "images_made": self.images_made, "janitor_deleted": self.janitor.deleted,
            "janitor_bound": {"max_files": self.janitor.max_files, "max_mb": self.janitor.max_mb,
                              "min_age_s": self.janitor.min_age_s},
            "errors": self.error_count, "error_samples": self.errors,
            "t2i_requests": len(lat), "t2i_p50_ms": round(statistics.median(lat), 1) if lat else None,
            "t2i_p95_ms": round(p95, 1) if p95 is not None else None,
            "live_frames": self.live_frames, "switches": self.switches,
            "graph_traces_after_warmup": traces_warm, "graph_traces": self._traces(),
            "idle_timeout_s": gate.idle_s,
            "idle_slot_reclaimed_s": round(reclaimed, 2) if reclaimed is not None else None,
            **({"object_growth": _growth(objects_warm, objects_end)} if self.args.objects else {}),
            "rss_mb_series": [[round(t), round(r, 1)] for t, r in self.rss[::max(1, len(self.rss) // 120)]],
        }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the mixed load")
    parser.add_argument("--clients", type=int, default=8, help="text-to-image API clients")
    parser.add_argument("--switch-s", type=float, default=30.0, help="seconds between LoRA / ControlNet switches")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="seconds before the RSS baseline (default: 6 switch periods, every LoRA scale and "
                             "ControlNet pairing once, at most a third of the run)")
    parser.add_argument("--model", default=None, help="preset or folder (default: what the app opens with)")
    parser.add_argument("--search-dir", action="append", type=Path, default=None,
                        help="folders to offer models, ControlNets and LoRAs from (default: outputs/ and assets/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as app.py)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"),
                        help="what runs the U-Net and decoder (default: the app's, auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8", "mixed"),
                        help="openvino's precision (default: the app's, auto)")
    parser.add_argument("--objects", action="store_true",
                        help="also count live Python objects by type at warm-up and at the end (object_growth)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.switch_s <= 0:
        parser.error("--minutes and --switch-s must be > 0, --clients >= 1")
    if args.warmup_s is None:
        args.warmup_s = min(6 * args.switch_s, args.minutes * 60 / 3)

    import torch

    from sdxs_core import limits
    from sdxs_core.devices import serving_threads
    from sdxs_core.hub import ModelHub

    torch.set_num_threads(args.threads or serving_threads())
    limits.limit_malloc_arenas()  # as app.main() does
    janitor = limits.CacheJanitor(limits.private_cache_dir()).start()
    import app

    hub = ModelHub(search_dirs=args.search_dir, device="cpu", backend=args.backend, precision=args.precision)
    print(hub.start(args.model or hub.default_model()).replace("**", ""))
    gate = app.live_gate()
    options = app.launch_options(hub, gate=gate)
    demo = app.build_demo(hub)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **options)
    try:
        report = Soak(f"http://127.0.0.1:{port}/", hub, janitor, args).run(gate)
    finally:
        demo.close()
        janitor.stop()
    path = write_results(args.out, report)
    summary = {k: report[k] for k in ("minutes", "rss_mb_after_warmup", "rss_mb_end", "rss_growth_pct",
                                      "temp_files_max", "errors", "t2i_p95_ms", "idle_slot_reclaimed_s")}
    print(json.dumps(summary))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
