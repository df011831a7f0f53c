"""The SDXS method on the miniature world: teacher, KD student and the one-step students, side by side.

Rows (any whose folder is missing is skipped and listed): teacher with its sampler + CFG, teacher at one
step, block-removal KD student with the teacher's sampler, MSE-regression one-step (Fig. 6's contrast),
FM-only one-step, FM + SSD one-step (the final model), all decoded by the teacher's VAE so that they
compare U-Nets alone; then the final model with the tiny decoder (``--decoder``), as the app ships it.
Every row shares prompts, seeds and the real reference sets, and adds the U-Net's parameters and
GFLOPs per image (counted by torch's FLOP counter).

    python -m benchmarks.miniature_sdxs --runs runs/miniature --n 256     # -> results/miniature_sdxs.json
    python -m benchmarks.miniature_sdxs --teacher assets/miniature/teacher-sd4 --runs R --decoder D \
        --n 256 --out benchmarks/results/miniature_sdxs_sd4.json        # the SD1.5-layout chain (the default)
"""

import argparse
import os
import time
from pathlib import Path

from benchmarks.miniature_teacher import ROW_KEYS
from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS, ROOT


def unet_cost(engine) -> tuple[int, float]:
    """Parameters and GFLOPs of one U-Net forward on one image at the model's native size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = engine.unet
    side = unet.config.sample_size
    x = torch.zeros(1, unet.config.in_channels, side, side, device=engine.device, dtype=engine.dtype)
    text = engine.encode_prompt([""])
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([999], device=engine.device), encoder_hidden_states=text)
    return sum(p.numel() for p in unet.parameters()), counter.get_total_flops() / 1e9


def decoder_comparison(teacher: Path, decoder: Path, n: int = 256, repeats: int = 20) -> dict:
    """Tiny decoder vs the teacher's VAE decoder on the teacher's latents of held-out scenes: PSNR of
    the tiny decode against the VAE decode (what Eq. 5 trains for), and decode time per image."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from trainers.miniature import world

    folder = decoder / "vae" if (decoder / "vae").is_dir() else decoder
    vae = AutoencoderKL.from_pretrained(teacher / "vae", dtype=torch.float32).eval()
    tiny = AutoencoderTiny.from_pretrained(folder, dtype=torch.float32).eval()
    images = world.render_batch(20261126, n, style="plain", split="eval")["images"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    with torch.inference_mode():
        z = vae.encode(x).latent_dist.mean  # unscaled: what both decoders receive in a pipeline
        z_tiny = z * vae.config.scaling_factor / tiny.config.scaling_factor  # the same latents in the tiny's scale
        ref = vae.decode(z).sample.clamp(-1, 1)
        out = tiny.decode(z_tiny).sample.clamp(-1, 1)
        mse = ((out - ref) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        times = {}
        for name, decode in (("vae", lambda: vae.decode(z[:1])), ("tiny", lambda: tiny.decode(z_tiny[:1]))):
            decode()
            t0 = time.perf_counter()
            for _ in range(repeats):
                decode()
            times[name] = (time.perf_counter() - t0) / repeats * 1000
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"n_images": n, "psnr_vs_vae_db": round(float((10 * torch.log10(1 / mse)).mean()), 2),
            "vae_decode_ms": round(times["vae"], 2), "tiny_decode_ms": round(times["tiny"], 2),
            "vae_decoder_params": count(vae.decoder), "tiny_decoder_params": count(tiny.decoder),
            "path": os.path.relpath(folder.resolve(), ROOT)}


def rows_to_run(teacher: Path, runs: Path, steps: int, cfg: float,
                decoder: Path) -> list[tuple[str, Path, int, float, Path]]:
    """(name, U-Net's pipeline folder, steps, cfg, the folder whose ``vae`` decodes)."""
    return [("teacher", teacher, steps, cfg, teacher), ("teacher", teacher, 1, 0.0, teacher),
            ("KD student", runs / "block_kd" / "final", steps, cfg, teacher),
            ("MSE one-step", runs / "mse_baseline" / "final", 1, 0.0, teacher),
            ("FM-only one-step", runs / "fm_warmup" / "final", 1, 0.0, teacher),
            ("FM+SSD one-step", runs / "ssd" / "final", 1, 0.0, teacher),
            ("FM+SSD one-step + tiny decoder", runs / "ssd" / "final", 1, 0.0, decoder)]


def markdown_table(report: dict) -> str:
    lines = ["| model | NFE | CFG | prompt acc. | mFID | diversity | U-Net params | GFLOPs | ms/image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['nfe']} | {r['cfg']:g} | {r['prompt_accuracy']:.1%} | {r['mfid']:.1f} | "
                     f"{r['diversity']:.2f} | {r['unet_params'] / 1e6:.2f} M | {r['unet_gflops']:.3f} | {r['latency_ms']:.1f} |")
    lines.append(f"| real images (reference) | - | - | {report['real_prompt_accuracy']:.1%} | "
                 f"{report['real_vs_real_mfid']:.1f} (floor) | {report['real_diversity']:.2f} | - | - | - |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=ROOT / "assets" / "miniature" / "teacher")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "miniature", help="trainer run folders")
    parser.add_argument("--decoder", type=Path, default=None,
                        help="pipeline folder of the tiny decoder (default: RUNS/decoder/final)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps of the multi-step rows")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance of the multi-step rows")
    parser.add_argument("--n", type=int, default=256, help="images per row")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "miniature_sdxs.json")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from sdxs_core.loading import load_engine
    from trainers.miniature.classifier import load_classifier
    from trainers.miniature.evaluate import evaluate_model

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    classifier = load_classifier()
    rows, skipped, first = [], [], None
    decoder = args.decoder or args.runs / "decoder" / "final"
    for name, folder, steps, cfg, vae_folder in rows_to_run(args.teacher, args.runs, args.steps, args.cfg, decoder):
        missing = [f for f in (folder, vae_folder) if not (f / "model_index.json").is_file()]
        if missing:
            skipped.append(f"{name}: no model at {missing[0]}")
            continue
        engine = load_engine(folder, device="cpu", graphs=False, vae=vae_folder)
        result = evaluate_model(engine, args.n, steps, cfg, batch=args.batch, classifier=classifier, name=name)
        first = first or result
        params, gflops = unet_cost(engine)
        rows.append({**{k: result[k] for k in ROW_KEYS}, "steps": steps, "unet_params": params,
                     "unet_gflops": round(gflops, 4), "attribute_accuracy": result["attribute_accuracy"],
                     "path": os.path.relpath(folder.resolve(), ROOT),
                     "decoder": os.path.relpath((vae_folder / "vae").resolve(), ROOT)})
        print(f"{name} ({steps} steps): {result['prompt_accuracy']:.1%}, mFID {result['mfid']:.1f}", flush=True)
    if first is None:
        parser.error("no model folders found: " + "; ".join(skipped))
    decoders = decoder_comparison(args.teacher, decoder) if (decoder / "vae").is_dir() else None
    report = {"n_images": args.n, "rows": rows, "decoders": decoders, "real_vs_real_mfid": first["real_vs_real_mfid"],
              "real_diversity": first["real_diversity"], "real_prompt_accuracy": first["real_prompt_accuracy"],
              "skipped": skipped, "threads": args.threads, "wall_seconds": round(time.perf_counter() - start, 1)}
    print()
    print(markdown_table(report))
    if decoders:
        print(f"\ntiny decoder vs VAE decoder: PSNR {decoders['psnr_vs_vae_db']:.2f} dB against the VAE decode; "
              f"{decoders['tiny_decode_ms']:.2f} vs {decoders['vae_decode_ms']:.2f} ms per image")
    write_results(args.out, report, command_line("benchmarks.miniature_sdxs", argv))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
