"""Latency of one image, batch 1, prompt cached: plain diffusers vs the ``OneStepEngine`` on each backend
and precision, per stage (ms).

Every row runs the SAME networks: SDXS-512's architecture with random weights by default (an
SD1.5-sized CLIP text encoder, the 315.7 M-param U-Net, default TAESD, DDPM with "trailing" spacing
so the one step is t=999), or a local pipeline folder (``--model``). Rows, each the median of
``--runs`` runs after one warm-up, interleaved so that load from other processes hits every row alike:

- ``diffusers``: ``StableDiffusionPipeline(num_inference_steps=1, guidance_scale=0)``, timed from
  outside (hooks on the text encoder and U-Net forwards, a wrapper on ``vae.decode``);
- ``engine torch fp32`` / ``engine torch bf16``: ``OneStepEngine.generate`` with a fixed prompt (the
  prompt cache makes text ~0), traced one-step graphs as ``load_engine`` uses on a CPU;
- ``engine openvino <precision>``: the same through ``sdxs_core.openvino_backend`` (fp32, bf16 where
  the CPU has it, int8, mixed). ``startup_s`` is what making it ready cost in this run (conversion, or
  reading the disk cache when an earlier run converted the same weights).

``quality_drop_points`` is the prompt-accuracy drop of that precision on the miniature default vs fp32,
read from ``results/backend_quality.json`` (``python -m benchmarks.backend_quality``); 0 for fp32,
None where not measured. With ``--device cuda`` the rows are torch eager vs ``torch.compile`` + CUDA
graphs (``sdxs_core.gpu``), each at every ``--batch`` size, with ``batch`` and ``images_per_s``.

    OMP_NUM_THREADS=2 python -m benchmarks.latency --runs 11      # this CPU -> results/latency_cpu.json
    python -m benchmarks.latency --device cuda --batch 1 8 32      # -> results/latency_cuda.json
    python -m benchmarks.latency --model PATH                      # a real local diffusers folder
    python -m benchmarks.latency --smoke                           # tiny models, 64x64, 2 runs, no JSON
"""

import argparse
import copy
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.results_io import read_results, results_path, write_results
from benchmarks.sdxs512 import random_sdxs512_components

STAGES = ("text_ms", "unet_ms", "decode_ms", "total_ms")
PROMPT = "a photo of an astronaut riding a horse"
CPU_ROWS = ("diffusers", "torch fp32", "torch bf16", "openvino fp32", "openvino bf16", "openvino int8",
            "openvino mixed")
CALIBRATION_SIZE = 8  # int8 speed does not depend on it; random weights have no quality to keep


def components(model: str | None, smoke: bool) -> tuple[dict, str]:
    from sdxs_core.loading import load_pipeline_components, resolve_model_dir
    from sdxs_core.testkit import build_tiny_pipeline

    if model:
        return load_pipeline_components(resolve_model_dir(model)[0], torch.device("cpu"), torch.float32), model
    if smoke:
        pipe = build_tiny_pipeline()
        return {k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "unet", "vae", "scheduler")}, "tiny"
    return random_sdxs512_components(), "random SDXS-512"


def to_dtype(parts: dict, device: torch.device, dtype: torch.dtype) -> dict:
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on every dtype cast, even with nothing to keep in fp32
    out = dict(parts)
    for name in ("text_encoder", "unet", "vae"):
        module = parts[name]
        if next(module.parameters()).dtype != dtype or next(module.parameters()).device != device:
            module = copy.deepcopy(module).to(device, dtype)
        out[name] = module
    dlogging.set_verbosity(level)
    return out


@contextmanager
def stage_clock(pipe, device: torch.device):
    """Per-stage wall time of pipeline calls, measured from outside diffusers. ``vae.decode`` is not
    a ``forward``, so it gets a wrapper instead of hooks. Everything is removed on exit, because
    the engines share these modules."""
    from sdxs_core.devices import synchronize

    ms, starts = dict.fromkeys(STAGES[:3], 0.0), {}

    def start(stage):
        synchronize(device)
        starts[stage] = time.perf_counter()

    def stop(stage):
        synchronize(device)
        ms[stage] += (time.perf_counter() - starts[stage]) * 1e3

    handles = []
    for module, stage in ((pipe.text_encoder, "text_ms"), (pipe.unet, "unet_ms")):
        handles.append(module.register_forward_pre_hook(lambda *_, s=stage: start(s)))
        handles.append(module.register_forward_hook(lambda *_, s=stage: stop(s)))
    decode = pipe.vae.decode

    def timed_decode(*args, **kwargs):
        start("decode_ms")
        out = decode(*args, **kwargs)
        stop("decode_ms")
        return out

    pipe.vae.decode = timed_decode
    try:
        yield ms
    finally:
        for h in handles:
            h.remove()
        del pipe.vae.decode  # the instance attribute; the class method shows through again


def quality_drops() -> dict[str, float]:
    """Prompt-accuracy drop (points) by backend precision, from ``benchmarks.backend_quality``."""
    path = results_path("backend_quality")
    if not path.is_file():
        return {}
    return {row["precision"]: row["quality_drop_points"] for row in read_results(path)["rows"]}


def diffusers_runner(parts: dict, device: torch.device, height: int, width: int, batch: int):
    from diffusers import StableDiffusionPipeline

    from sdxs_core.devices import synchronize

    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run(i):
        with stage_clock(pipe, device) as ms:
            t0 = time.perf_counter()
            pipe(PROMPT, height=height, width=width, num_inference_steps=1, guidance_scale=0.0,
                 num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(i))
            synchronize(device)
            ms["total_ms"] = (time.perf_counter() - t0) * 1e3
        return ms

    return run


def engine_runner(engine, height: int, width: int, batch: int):
    def run(i):
        timings = engine.generate(PROMPT, seed=i, num_images=batch, height=height, width=width).timings
        return {s: getattr(timings, s) for s in STAGES}

    return run


def cpu_rows(parts: dict, wanted: list[str], height: int, width: int, cache_dir, calibration_size: int) -> dict:
    """name -> (runner, precision, startup_s) for the CPU rows this machine can run."""
    from sdxs_core.engine import OneStepEngine
    from sdxs_core.openvino_backend import OpenVINOBackend, available, cpu_supports_bf16

    cpu = torch.device("cpu")
    rows = {}
    for name in wanted:
        kind, precision = ("diffusers", "fp32") if name == "diffusers" else name.split()
        if kind == "openvino" and (not available() or (precision == "bf16" and not cpu_supports_bf16())):
            print(f"skipped {name}: {'openvino is not installed' if not available() else 'no bf16 on this CPU'}")
            continue
        if kind == "torch" and precision == "bf16" and not cpu_supports_bf16():
            print(f"skipped {name}: no bf16 on this CPU")
            continue
        start = time.perf_counter()
        if kind == "diffusers":
            runner = diffusers_runner(parts, cpu, height, width, 1)
        elif kind == "torch":
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            engine = OneStepEngine(**to_dtype(parts, cpu, dtype), name="bench", graphs=True)
            engine.generate(PROMPT, seed=0, height=height, width=width)  # the trace is part of start-up
            runner = engine_runner(engine, height, width, 1)
        else:
            backend = OpenVINOBackend(precision, cache_dir, calibration_size=calibration_size)
            engine = OneStepEngine(**parts, name="bench", graphs=True, backend=backend)
            for event in backend.prepare(engine, height, width):
                print(f"  {event}", flush=True)
            runner = engine_runner(engine, height, width, 1)
        rows[name if kind == "diffusers" else f"engine {name}"] = (runner, precision, time.perf_counter() - start)
        print(f"ready: {name} ({time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def cuda_rows(parts: dict, device: torch.device, dtype: torch.dtype, height: int, width: int,
              batches: list[int]) -> dict:
    """Eager and compiled (``sdxs_core.gpu``: channels-last, torch.compile, CUDA graphs) at each batch."""
    from sdxs_core.engine import OneStepEngine
    from sdxs_core.gpu import accelerate

    precision = str(dtype).removeprefix("torch.").replace("float", "fp")
    parts = to_dtype(parts, device, dtype)
    rows = {}
    for batch in batches:
        rows[f"diffusers b{batch}"] = (diffusers_runner(parts, device, height, width, batch), precision, 0.0, batch)
    eager = OneStepEngine(**parts, name="bench")
    for batch in batches:
        rows[f"engine torch {precision} eager b{batch}"] = (engine_runner(eager, height, width, batch), precision,
                                                           0.0, batch)
    compiled = OneStepEngine(**to_dtype({k: copy.deepcopy(v) if k in ("unet", "vae") else v
                                         for k, v in parts.items()}, device, dtype), name="bench")
    for batch in batches:
        start = time.perf_counter()
        note = accelerate(compiled, height=height, width=width, batch=batch)
        print(note, flush=True)
        rows[f"engine torch {precision} compiled b{batch}"] = (engine_runner(compiled, height, width, batch),
                                                              precision, time.perf_counter() - start, batch)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", help="time a local diffusers pipeline folder instead")
    source.add_argument("--smoke", action="store_true", help="tiny models at 64x64, 2 runs: a quick check")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default=None, help="cuda only: fp16 (default) or bf16")
    parser.add_argument("--rows", nargs="+", default=list(CPU_ROWS), choices=CPU_ROWS, help="CPU rows to time")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="cuda: batch sizes (CPU: 1)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512, 64 with --smoke)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row after 1 warm-up (default 11)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: OMP_NUM_THREADS, else every core)")
    parser.add_argument("--cache-dir", default=None, help="OpenVINO's converted models (default: its own)")
    parser.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE, help="int8 calibration inputs")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/latency_<device>.json; none with --smoke)")
    args = parser.parse_args(argv)
    side = args.size or (64 if args.smoke else 512)
    runs = args.runs or (2 if args.smoke else 11)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()
    if runs < 1 or threads < 1 or min(args.batch) < 1:
        parser.error("--runs, --threads and --batch must be >= 1")

    from sdxs_core.architectures import count_params
    from sdxs_core.devices import resolve_device, resolve_dtype

    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    parts, model = components(args.model, args.smoke)
    if device.type == "cuda":
        dtype = resolve_dtype(device, args.dtype)
        rows = cuda_rows(parts, device, dtype, side, side, args.batch)
    else:
        rows = {k: (*v, 1) for k, v in cpu_rows(parts, args.rows, side, side, args.cache_dir,
                                                 args.calibration_size).items()}
    samples = {name: [] for name in rows}
    for i in range(runs + 1):  # run 0 is the warm-up
        for name, (run, *_) in rows.items():
            result = run(i)
            if i:
                samples[name].append(result)
    drops = quality_drops()
    medians = []
    for name, (_, precision, startup_s, batch) in rows.items():
        row = {"impl": name, "precision": precision,
               "quality_drop_points": 0.0 if precision == "fp32" else drops.get(name.split()[-1] if "openvino" in name
                                                                                else f"torch {precision}"),
               **{s: round(statistics.median(r[s] for r in samples[name]), 1) for s in STAGES},
               "startup_s": round(startup_s, 1)}
        if device.type == "cuda":
            row.update(batch=batch, images_per_s=round(batch * 1e3 / row["total_ms"], 1))
        medians.append(row)

    report = dict(model=model, unet_params=count_params(parts["unet"]), height=side, width=side, threads=threads,
                  runs=runs, batch=1 if device.type == "cpu" else args.batch, prompt_cached=True,
                  calibration_size=args.calibration_size, rows=medians)
    print(f"\n{model}, {side}x{side}, {threads} threads, median of {runs} runs (ms)\n")
    print("| impl | precision | quality drop | text | U-Net | decode | total | start-up s |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    for row in medians:
        drop = row["quality_drop_points"]
        print(f"| {row['impl']} | {row['precision']} | {'-' if drop is None else drop} | "
              + " | ".join(f"{row[s]:.1f}" for s in STAGES) + f" | {row['startup_s']} |")
    out = args.out or (None if args.smoke else results_path(f"latency_{device.type}"))
    if out is not None:
        write_results(out, report)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
