"""Latency of one image, batch 1: plain diffusers vs the ``OneStepEngine``, per stage (ms).

Both run the SAME component objects: SDXS-512's architecture with random weights by default (an
SD1.5-sized CLIP text encoder, the 315.7 M-param U-Net, default TAESD, DDPM with "trailing" spacing
so the one step is t=999), or a local pipeline folder (``--model``). Rows, each the median of
``--runs`` runs after one warm-up, interleaved so that load from other processes hits every row alike:

- ``diffusers``: ``StableDiffusionPipeline(num_inference_steps=1, guidance_scale=0)``, timed from
  outside (hooks on the text encoder and U-Net forwards, a wrapper on ``vae.decode``; so its text
  column excludes tokenizing, which the engine's includes);
- ``engine``: ``OneStepEngine.generate`` with a fixed prompt, as in an app (prompt cache: text ~0);
- ``engine (new prompt)``: a different prompt each run, so the text encoder runs.

    python -m benchmarks.latency                              # this CPU -> results/latency_cpu.json
    python -m benchmarks.latency --device cuda --dtype fp16   # -> results/latency_cuda.json
    python -m benchmarks.latency --model PATH                 # a real local diffusers folder
    python -m benchmarks.latency --smoke                      # tiny models, 64x64, 2 runs, no JSON
"""

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

STAGES = ("text_ms", "unet_ms", "decode_ms", "total_ms")
RESULTS = Path(__file__).parent / "results"
PROMPT = "a photo of an astronaut riding a horse"


def random_sdxs512_components() -> dict:
    """SDXS-512 (SD1.5 family) at full size with random weights: nothing to download."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdxs_core.architectures import build_sdxs512_unet, build_taesd
    from sdxs_core.testkit import build_tokenizer

    tokenizer = build_tokenizer()  # CLIP's real vocab is not available offline; every prompt is 77 tokens anyway
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, timestep_spacing="trailing", steps_offset=1)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, unet=build_sdxs512_unet(),
                vae=build_taesd(), scheduler=scheduler)


def build_engine(model: str | None, smoke: bool, device: torch.device, dtype: torch.dtype):
    from diffusers.utils import logging as dlogging

    from sdxs_core.engine import OneStepEngine
    from sdxs_core.loading import load_engine
    from sdxs_core.testkit import build_tiny_pipeline

    if model:
        return load_engine(model, device=device, dtype=dtype)
    if smoke:
        pipe = build_tiny_pipeline()
        components = {k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "unet", "vae", "scheduler")}
    else:
        components = random_sdxs512_components()
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on every dtype cast, even with nothing to keep in fp32
    for name in ("text_encoder", "unet", "vae"):
        components[name].to(device, dtype)
    dlogging.set_verbosity(level)
    return OneStepEngine(**components, name="tiny testkit pipeline" if smoke else "random SDXS-512")


@contextmanager
def stage_clock(pipe, device: torch.device):
    """Per-stage wall time of pipeline calls, measured from outside diffusers. ``vae.decode`` is not
    a ``forward``, so it gets a wrapper instead of hooks. Everything is removed on exit, because
    the engine shares these modules."""
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--random-weights", action="store_true", help="SDXS-512 shapes, random weights (default)")
    source.add_argument("--model", metavar="PATH", help="time a local diffusers pipeline folder instead")
    source.add_argument("--smoke", action="store_true", help="tiny models at 64x64, 2 runs: a quick check")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--dtype", default=None, help="fp32 / fp16 / bf16 (default fp32 on CPU, fp16 on CUDA)")
    parser.add_argument("--height", type=int, default=None, help="default 512 (64 with --smoke)")
    parser.add_argument("--width", type=int, default=None, help="default 512 (64 with --smoke)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per row, after 1 warm-up (default 5, 2 with --smoke)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/latency_<device>.json; none with --smoke)")
    args = parser.parse_args(argv)
    size = 64 if args.smoke else 512
    height, width = args.height or size, args.width or size
    runs = args.runs if args.runs is not None else 2 if args.smoke else 5
    if runs < 1 or args.threads < 1:
        parser.error(f"--runs and --threads must be >= 1, got {runs} and {args.threads}")

    from diffusers import StableDiffusionPipeline

    from sdxs_core.architectures import count_params
    from sdxs_core.devices import resolve_device, resolve_dtype, synchronize

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    engine = build_engine(args.model, args.smoke, device, dtype)
    pipe = StableDiffusionPipeline(tokenizer=engine.tokenizer, text_encoder=engine.text_encoder, unet=engine.unet,
                                   vae=engine.vae, scheduler=engine.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run_diffusers(i):
        with stage_clock(pipe, device) as ms:
            t0 = time.perf_counter()
            pipe(PROMPT, height=height, width=width, num_inference_steps=1, guidance_scale=0.0,
                 generator=torch.Generator("cpu").manual_seed(i))
            synchronize(device)
            ms["total_ms"] = (time.perf_counter() - t0) * 1e3
        return ms

    def run_engine(prompt, i):
        timings = engine.generate(prompt, seed=i, height=height, width=width).timings
        return {s: getattr(timings, s) for s in STAGES}

    rows = {"diffusers": run_diffusers,
            "engine": lambda i: run_engine(PROMPT, i),
            "engine (new prompt)": lambda i: run_engine(f"{PROMPT}, take {i}", i)}
    samples = {name: [] for name in rows}
    for i in range(runs + 1):  # run 0 is the warm-up
        for name, run in rows.items():
            result = run(i)
            if i:
                samples[name].append(result)
    medians = [{"impl": name, **{s: round(statistics.median(r[s] for r in rs), 1) for s in STAGES}}
               for name, rs in samples.items()]

    report = dict(device=device_name(device), unet_params=count_params(engine.unet), height=height, width=width,
                  threads=args.threads, runs=runs, dtype=str(dtype).removeprefix("torch."), model=engine.name,
                  rows=medians)
    print(f"{report['model']} on {report['device']}, {report['dtype']}, {height}x{width}, batch 1, "
          f"{args.threads} threads, median of {runs} runs (ms)\n")
    print("| impl | text | U-Net | decode | total |\n|---|---:|---:|---:|---:|")
    for row in medians:
        print(f"| {row['impl']} | " + " | ".join(f"{row[s]:.1f}" for s in STAGES) + " |")

    out = args.out or (None if args.smoke else RESULTS / f"latency_{device.type}.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
