"""Where the style LoRA's layout consistency is lost: the measure's ceiling, then the LoRA's pairs by legibility.

Layout consistency (``benchmarks.miniature_lora_controlnet``) asks the world classifier whether a scene keeps
its objects when a style LoRA is switched on. This script separates what the measure allows from what the
LoRA does:

1. **Ceiling**: the same held-out scenes rendered plain and pastel by the world itself (a perfect restyle),
   read as rendered, then through the teacher's VAE (encode, decode) and through each ``--decoder`` (the
   VAE's encoding decoded by a student's decoder). Legibility is the share of images read as their caption.
2. **The LoRA's pairs** (``--student``, ``--lora``): the pairs of LoRA off / on images split by whether the
   LoRA-off image is read as its prompt; with the student's own decoder and with the teacher's VAE; and, with
   ``--teacher-lora``, the teacher's own pairs (its sampler and CFG: slow, ~2 s per image on one core).

    python -m benchmarks.layout_consistency --n 1024                       # -> results/layout_consistency.json
    python -m benchmarks.layout_consistency --student '' --decoder --teacher-lora \
        assets/miniature/lora-pastel-teacher-sd4/pytorch_lora_weights.safetensors --n 512 \
        --out benchmarks/results/layout_consistency_teacher.json          # the teacher's own pairs

A decoder that paints every image alike would score consistent and illegible: read both columns together.
"""

import argparse
import dataclasses
import os
import time
from pathlib import Path

from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "miniature"


def read(classifier, images, captions: list[str]):
    """(the scenes the classifier reads in images, a bool array: read as the caption says)."""
    import numpy as np

    from trainers.miniature.classifier import caption_correct, predict_attributes
    from trainers.miniature.evaluate import to_uint8

    specs = predict_attributes(classifier, to_uint8(images))
    return specs, np.array([caption_correct(p, c) for p, c in zip(specs, captions)])


def restyled_renders(n: int, seed: int = 7) -> dict:
    """uint8 plain and pastel renders [n, 64, 64, 3] of the same held-out scenes (same geometry, appearance
    draws and captions: only the style differs), and their captions."""
    from trainers.miniature import world

    specs, appearance = world.sample_specs(seed, n, "plain", "eval")
    plain = world.render_specs(specs, appearance)
    pastel = world.render_specs([dataclasses.replace(s, style="pastel") for s in specs], appearance)
    return {"plain": plain["images"], "pastel": pastel["images"], "captions": plain["captions"]}


def roundtrip(images, encoder, decoder, batch: int = 128):
    """uint8 images -> the ``encoder``'s (an AutoencoderKL's) latent mean -> ``decoder`` -> floats in [0, 1].
    The latents cross in the U-Net's scaled space, as a one-step student's do."""
    import numpy as np
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            z = encoder.encode(x).latent_dist.mean * encoder.config.scaling_factor
            y = decoder.decode(z / decoder.config.scaling_factor, return_dict=False)[0].float()
            out.append(((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def ceiling_row(classifier, name: str, plain, pastel, captions: list[str]) -> dict:
    from benchmarks.miniature_lora_controlnet import changes_between

    (a, right_a), (b, right_b) = read(classifier, plain, captions), read(classifier, pastel, captions)
    changes = changes_between(a, b)
    return {"path": name, "plain_legibility": float(right_a.mean()), "pastel_legibility": float(right_b.mean()),
            "layout_consistency": 1.0 - changes["any"], "layout_changes": changes}


def lora_pair_split(classifier, off, on, prompts: list[str]) -> dict:
    """Layout consistency over all pairs and over the pairs whose LoRA-off image is read right or wrong."""
    import numpy as np

    from benchmarks.miniature_lora_controlnet import _layout

    (a, right_off), (b, right_on) = read(classifier, off, prompts), read(classifier, on, prompts)
    same = np.array([_layout(x) == _layout(y) for x, y in zip(a, b)])
    share = lambda mask: float(same[mask].mean()) if mask.any() else None  # noqa: E731
    return {"layout_consistency": float(same.mean()), "off_legibility": float(right_off.mean()),
            "on_legibility": float(right_on.mean()), "consistency_off_read_right": share(right_off),
            "consistency_off_read_wrong": share(~right_off)}


def markdown_tables(report: dict) -> str:
    lines = ["| same scenes, plain vs pastel | plain legibility | pastel legibility | layout consistency |",
             "|---|---:|---:|---:|"]
    for r in report["ceiling"]:
        lines.append(f"| {r['path']} | {r['plain_legibility']:.1%} | {r['pastel_legibility']:.1%} | "
                     f"{r['layout_consistency']:.1%} |")
    if report["lora_pairs"]:
        pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
        lines += ["", "| model, LoRA off / on | legibility off / on | layout consistency | when off is read right | "
                      "when off is read wrong |", "|---|---:|---:|---:|---:|"]
        for r in report["lora_pairs"]:
            lines.append(f"| {r['model']} | {r['off_legibility']:.1%} / {r['on_legibility']:.1%} | "
                         f"{r['layout_consistency']:.1%} | {pct(r['consistency_off_read_right'])} | "
                         f"{pct(r['consistency_off_read_wrong'])} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=ASSETS / "teacher-sd4", help="its VAE encodes the renders")
    parser.add_argument("--decoder", type=Path, nargs="*", default=[ASSETS / "sdxs-sd4-fast"],
                        help="student decoders (pipeline or AutoencoderTiny folders) for the ceiling rows")
    parser.add_argument("--student", type=Path, default=ASSETS / "sdxs-sd4-fast",
                        help="one-step student for the LoRA's pairs (none: --student '')")
    parser.add_argument("--lora", type=Path, default=ASSETS / "lora-pastel-sd4" / "pytorch_lora_weights.safetensors")
    parser.add_argument("--teacher-lora", type=Path, default=None,
                        help="the teacher's style LoRA: add the teacher's own pairs (e.g. ASSETS/lora-pastel-teacher-sd4)")
    parser.add_argument("--steps", type=int, default=25, help="the teacher's sampler steps")
    parser.add_argument("--cfg", type=float, default=5.0, help="the teacher's guidance scale")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "layout_consistency.json")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    import torch

    from benchmarks.miniature_lora_controlnet import generate_images
    from sdxs_core.loading import load_engine
    from trainers.core.components import load_vae
    from trainers.miniature import world
    from trainers.miniature.classifier import load_classifier

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    classifier = load_classifier()
    renders = restyled_renders(args.n)
    caps = renders["captions"]
    vae = load_vae(args.teacher).eval()
    ceiling = [ceiling_row(classifier, "renders", renders["plain"], renders["pastel"], caps),
               ceiling_row(classifier, "teacher's VAE", roundtrip(renders["plain"], vae, vae),
                           roundtrip(renders["pastel"], vae, vae), caps)]
    for folder in args.decoder:
        decoder = load_vae(folder).eval()
        ceiling.append(ceiling_row(classifier, f"VAE encoder, {os.path.relpath(folder)} decoder",
                                   roundtrip(renders["plain"], vae, decoder), roundtrip(renders["pastel"], vae, decoder),
                                   caps))
    rows = []  # (label, engine, LoRA, steps, cfg)
    if str(args.student) not in ("", "."):
        with_vae = load_engine(args.student, device="cpu", graphs=False, vae=args.teacher)
        rows += [("one-step student, its decoder", load_engine(args.student, device="cpu"), args.lora, 1, 0.0),
                 ("one-step student, teacher's VAE", with_vae, args.lora, 1, 0.0)]
    if args.teacher_lora:
        rows.append((f"teacher, {args.steps} steps, CFG {args.cfg:g}", load_engine(args.teacher, device="cpu"),
                     args.teacher_lora, args.steps, args.cfg))
    prompts, seeds = [p for p in world.eval_prompts(args.n // 4) for _ in range(4)], list(range(args.n))
    lora_pairs = []
    for label, engine, lora, steps, cfg in rows:
        off, _ = generate_images(engine, prompts, seeds, args.batch, steps, cfg)
        name = engine.load_lora(str(lora), scale=1.0)
        on, _ = generate_images(engine, prompts, seeds, args.batch, steps, cfg)
        engine.unload_lora(name)
        lora_pairs.append({"model": label, "lora": os.path.relpath(lora),
                           **lora_pair_split(classifier, off, on, prompts)})
        print(f"{label}: {lora_pairs[-1]['layout_consistency']:.1%} consistent", flush=True)
    report = {"n_images": args.n, "ceiling": ceiling, "lora_pairs": lora_pairs,
              "student": os.path.relpath(args.student) if str(args.student) not in ("", ".") else None,
              "teacher": os.path.relpath(args.teacher), "threads": args.threads,
              "wall_seconds": round(time.perf_counter() - start, 1)}
    print(markdown_tables(report))
    write_results(args.out, report, command_line("benchmarks.layout_consistency", argv))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
