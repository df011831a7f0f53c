"""LoRA and ControlNet distilled with SSD on the miniature world: teacher vs one-step student.

ControlNet rows (per control type, edges and depth): the teacher with its ControlNet and its sampler
+ CFG, and the one-step student with the SSD-distilled ControlNet; control maps come from real
renders of the held-out prompts, so edge F1 and depth correlation measure how well the output
follows them. LoRA rows: the one-step student without and with the distilled style LoRA: style
accuracy (share of images the classifier reads as the LoRA's style) and layout consistency (same
prompt and noise, LoRA off vs on: the share of images whose objects keep every attribute), which layout
parts the LoRA changed (count, shapes, colours, placement), at each of ``--lora-scales``; and the
consistency of a decoder swap alone: the same student latents through the tiny decoder vs the VAE, no
LoRA, i.e. what a small change of the image costs where the classifier's reading is borderline.

    python -m benchmarks.miniature_lora_controlnet --n 256       # the first student -> results/miniature_lora_controlnet.json
    python -m benchmarks.miniature_lora_controlnet --teacher assets/miniature/teacher-sd4 \
        --student assets/miniature/sdxs-sd4-fast --runs R --suffix=-sd4 \
        --lora assets/miniature/lora-pastel-sd4/pytorch_lora_weights.safetensors --student-control-scales 1.0 1.5 \
        --lora-scales 1.0 0.8 --n 256 --out benchmarks/results/miniature_lora_controlnet_sd4.json  # the default
    python -m benchmarks.miniature_lora_controlnet --teacher assets/miniature/teacher-sd4 \
        --student assets/miniature/sdxs-sd4-fast --runs EMPTY_DIR --assets EMPTY_DIR \
        --lora assets/miniature/lora-pastel-sd4/pytorch_lora_weights.safetensors --lora-scales 1.0 0.8 \
        --n 1024 --out benchmarks/results/miniature_lora_sd4.json   # the default's LoRA rows alone, n = 1,024

(``R`` holds the teacher's ControlNets and LoRA as ``controlnet_teacher_*/final`` and ``lora_teacher/final``.)

Missing model folders are skipped and listed.
"""

import argparse
import os
import time
from pathlib import Path

from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS, ROOT

RUNS = ROOT / "runs" / "miniature"
ASSETS = ROOT / "assets" / "miniature"


def controlnet_rows(teacher: Path, student: Path, runs: Path, assets: Path, steps: int, cfg: float,
                    suffix: str = "", student_scales: tuple[float, ...] = (1.0,)):
    """(name, pipeline, controlnet, control_type, steps, cfg, decoder, control_scale): teacher ControlNets
    from their runs at scale 1, student ControlNets from assets (what ships, ``controlnet-{kind}{suffix}``)
    or else their SSD runs, at each of ``student_scales``; the student once with its own tiny decoder (as
    shipped) and once decoded by the teacher's VAE (the decoder's share)."""
    rows = []
    for kind in ("edges", "depth"):
        shipped = assets / f"controlnet-{kind}{suffix}"
        controlnet = shipped if shipped.is_dir() else runs / f"controlnet_ssd_{kind}" / "final"
        teacher_cn = runs / f"controlnet_teacher_{kind}" / "final"
        rows.append((f"teacher + ControlNet ({kind})", teacher, teacher_cn, kind, steps, cfg, teacher, 1.0))
        for scale in student_scales:
            at = "" if scale == 1 else f", control scale {scale:g}"
            name = f"one-step student + ControlNet ({kind})"
            rows.append((f"{name}{at}", student, controlnet, kind, 1, 0.0, student, scale))
            rows.append((f"{name}, VAE decoder{at}", student, controlnet, kind, 1, 0.0, teacher, scale))
    return rows


def style_share(classifier, images, style: str) -> float:
    """Share of images whose predicted style is ``style``."""
    from trainers.miniature.classifier import predict_attributes
    from trainers.miniature.evaluate import to_uint8

    return sum(p.style == style for p in predict_attributes(classifier, to_uint8(images))) / len(images)


LAYOUT_PARTS = ("count", "shapes", "colours", "placement")


def _layout(spec) -> dict:
    """What a style must not change, per part: object count, shapes and colours in canonical order, and
    where the objects are (one object's position, two objects' relation)."""
    spec = spec.canonical()
    return {"count": len(spec.objects), "shapes": [o.shape for o in spec.objects],
            "colours": [o.colour for o in spec.objects], "placement": (spec.position, spec.relation)}


def changes_between(off_specs, on_specs) -> dict[str, float]:
    """Per layout part, the share of pairs of read scenes (``predict_attributes``) that differ there;
    ``any``: the pairs with at least one part changed (1 - layout consistency)."""
    changed = {part: 0 for part in (*LAYOUT_PARTS, "any")}
    for a, b in zip(off_specs, on_specs):
        a, b = _layout(a), _layout(b)
        for part in LAYOUT_PARTS:
            changed[part] += a[part] != b[part]
        changed["any"] += a != b
    return {part: v / len(off_specs) for part, v in changed.items()}


def layout_changes(classifier, off, on) -> dict[str, float]:
    """``changes_between`` for image pairs (LoRA off / on, same prompt and noise), read by the classifier."""
    from trainers.miniature.classifier import predict_attributes
    from trainers.miniature.evaluate import to_uint8

    return changes_between(predict_attributes(classifier, to_uint8(off)), predict_attributes(classifier, to_uint8(on)))


def layout_consistency(classifier, off, on) -> float:
    """Share of image pairs (LoRA off / on, same prompt and noise) whose objects agree in count,
    shape, colour and position/relation: a style LoRA should change the look, not the scene."""
    return 1.0 - layout_changes(classifier, off, on)["any"]


def generate_images(engine, prompts: list[str], seeds: list[int], batch: int, steps: int, cfg: float):
    """(images, ms per image) for prompt i at seed i."""
    import numpy as np

    images, ms = [], 0.0
    for s in range(0, len(prompts), batch):
        out = engine.generate(prompts[s:s + batch], seed=seeds[s:s + batch], num_inference_steps=steps,
                              guidance_scale=cfg, output_type="np")
        images.append(out.images)
        ms += out.timings.total_ms
    return np.concatenate(images), ms / len(prompts)


def lora_rows(engine, lora: Path, classifier, n: int, scales: tuple[float, ...] = (1.0,), style: str = "pastel",
              batch: int = 64, steps: int = 1, cfg: float = 0.0, label: str = "one-step student"):
    """A model with the LoRA off and on (at each of ``scales``), on the same held-out prompts and seeds.
    Returns the rows and the LoRA-off images (for the decoder swap)."""
    from trainers.miniature import world
    from trainers.miniature.evaluate import read_images

    prompts, seeds = [p for p in world.eval_prompts(n // 4) for _ in range(4)], list(range(n))
    nfe = steps * (2 if cfg > 1 else 1)

    def row(name, images, ms):
        read = read_images(classifier, images, prompts)
        return {"model": name, "nfe": nfe, "cfg": cfg, "style_accuracy": style_share(classifier, images, style),
                "prompt_accuracy": read["prompt_accuracy"], "attribute_accuracy": read["attribute_accuracy"],
                "latency_ms": ms}

    off, off_ms = generate_images(engine, prompts, seeds, batch, steps, cfg)
    rows = [row(label, off, off_ms)]
    for scale in scales:
        name = engine.load_lora(str(lora), scale=scale)
        on, on_ms = generate_images(engine, prompts, seeds, batch, steps, cfg)
        engine.unload_lora(name)
        changes = layout_changes(classifier, off, on)
        rows.append({**row(f"{label} + style LoRA ({scale:g})", on, on_ms), "lora_scale": scale,
                     "layout_consistency": 1.0 - changes["any"], "layout_changes": changes,
                     "lora": os.path.relpath(lora.resolve(), ROOT)})
    return rows, off


def markdown_tables(report: dict) -> str:
    lines = ["| model | control | NFE | edge F1 | depth corr. | prompt acc. | mFID | ms/image |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["controlnet_rows"]:
        f1 = "-" if r["edge_f1"] is None else f"{r['edge_f1']:.3f}"
        dc = "-" if r["depth_correlation"] is None else f"{r['depth_correlation']:.3f}"
        lines.append(f"| {r['model']} | {r['control_type']} | {r['nfe']} | {f1} | {dc} | {r['prompt_accuracy']:.1%} | "
                     f"{r['mfid']:.1f} | {r['latency_ms']:.1f} |")
    if report["lora_rows"]:
        lines += ["", "| model | NFE | style accuracy | layout consistency | changed: count / shapes / colours / placement "
                  "| prompt acc. | ms/image |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in report["lora_rows"]:
            lc = f"{r['layout_consistency']:.1%}" if "layout_consistency" in r else "-"
            ch = " / ".join(f"{r['layout_changes'][p]:.1%}" for p in LAYOUT_PARTS) if "layout_changes" in r else "-"
            lines.append(f"| {r['model']} | {r['nfe']} | {r['style_accuracy']:.1%} | {lc} | {ch} | "
                         f"{r['prompt_accuracy']:.1%} | {r['latency_ms']:.1f} |")
    if report.get("decoder_swap_consistency") is not None:
        lines += ["", "Layout consistency of a decoder swap alone (no LoRA; the student's same latents through its tiny "
                      f"decoder vs the VAE): {report['decoder_swap_consistency']:.1%}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=ASSETS / "teacher")
    parser.add_argument("--student", type=Path, default=ASSETS / "sdxs", help="the one-step student pipeline")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--suffix", default="",
                        help="name ending of the shipped ControlNets and LoRA of this student (--suffix=-sd4)")
    parser.add_argument("--lora", type=Path, default=None,
                        help="distilled style LoRA (default: ASSETS/lora-pastel{suffix}, else RUNS/lora_ssd/final)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--student-control-scales", type=float, nargs="+", default=[1.0],
                        help="ControlNet conditioning scales of the student rows (the teacher's: 1)")
    parser.add_argument("--lora-scales", type=float, nargs="+", default=[1.0],
                        help="LoRA scales of the student's LoRA rows (the teacher's LoRA: 1)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "miniature_lora_controlnet.json")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    import cv2
    import torch

    from sdxs_core.depth import MiniatureDepth
    from sdxs_core.loading import load_controlnet, load_engine
    from trainers.miniature.classifier import load_classifier
    from trainers.miniature.evaluate import evaluate_model

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    classifier, depth = load_classifier(), MiniatureDepth.load().estimate_batch
    cn_rows, skipped = [], []
    for name, pipeline, controlnet, kind, steps, cfg, decoder, scale in controlnet_rows(
            args.teacher, args.student, args.runs, args.assets, args.steps, args.cfg, args.suffix,
            tuple(args.student_control_scales)):
        if not all((f / "model_index.json").is_file() for f in (pipeline, decoder)) or not (controlnet / "config.json").is_file():
            skipped.append(f"{name}: no model at {pipeline}, {decoder} or {controlnet}")
            continue
        engine = (load_engine(pipeline, device="cpu") if decoder == pipeline
                  else load_engine(pipeline, device="cpu", graphs=False, vae=decoder))
        engine.set_controlnet(load_controlnet(controlnet, engine.device, engine.dtype))
        result = evaluate_model(engine, args.n, steps, cfg, batch=args.batch, control_type=kind, control_scale=scale,
                                depth_estimator=depth, classifier=classifier, name=name)
        cn_rows.append({**{k: result[k] for k in ("model", "control_type", "control_scale", "nfe", "cfg", "edge_f1",
                                                   "real_edge_f1", "depth_correlation", "prompt_accuracy", "mfid",
                                                   "real_vs_real_mfid", "latency_ms", "latency_ms_batch1")},
                        "controlnet": os.path.relpath(controlnet.resolve(), ROOT)})
        print(f"{name}: edge F1 {result['edge_f1']}, depth corr {result['depth_correlation']}", flush=True)
    lora = args.lora or next((p for p in (args.assets / f"lora-pastel{args.suffix}" / "pytorch_lora_weights.safetensors",
                                          args.runs / "lora_ssd" / "final" / "pytorch_lora_weights.safetensors")
                              if p.is_file()), None)
    lora_result, decoder_swap_consistency = [], None
    if lora is None or not (args.student / "model_index.json").is_file():
        skipped.append("style LoRA rows: no distilled LoRA or no student")
    else:
        teacher_lora = args.runs / "lora_teacher" / "final" / "pytorch_lora_weights.safetensors"
        if teacher_lora.is_file() and (args.teacher / "model_index.json").is_file():
            lora_result += lora_rows(load_engine(args.teacher, device="cpu"), teacher_lora, classifier, args.n,
                                     batch=args.batch, steps=args.steps, cfg=args.cfg, label="teacher")[0]
        else:
            skipped.append(f"teacher style LoRA rows: no LoRA at {teacher_lora} or no teacher")
        tiny, tiny_off = lora_rows(load_engine(args.student, device="cpu"), lora, classifier, args.n,
                                   tuple(args.lora_scales), batch=args.batch)
        lora_result += tiny
        if (args.teacher / "model_index.json").is_file():
            with_vae = load_engine(args.student, device="cpu", graphs=False, vae=args.teacher)
            vae, vae_off = lora_rows(with_vae, lora, classifier, args.n, tuple(args.lora_scales), batch=args.batch,
                                     label="one-step student, VAE decoder")
            lora_result += vae
            decoder_swap_consistency = layout_consistency(classifier, tiny_off, vae_off)
    report = {"n_images": args.n, "controlnet_rows": cn_rows, "lora_rows": lora_result,
              "decoder_swap_consistency": decoder_swap_consistency, "skipped": skipped,
              "threads": args.threads, "wall_seconds": round(time.perf_counter() - start, 1)}
    print()
    print(markdown_tables(report))
    write_results(args.out, report, command_line("benchmarks.miniature_lora_controlnet", argv))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
