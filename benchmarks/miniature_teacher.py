"""The miniature teacher on held-out prompts: its own sampler (25 steps + CFG) against one step, no CFG.

The one-step row is the baseline SDXS distillation has to beat: the teacher was never trained to jump
from noise to an image in one step. Both rows share prompts, seeds and real reference sets, so the
real-vs-real mFID floor (two independent real sets of the same size) is one number for the table.

    python -m benchmarks.miniature_teacher                        # assets/miniature/teacher, else runs/miniature/teacher
    python -m benchmarks.miniature_teacher --model runs/miniature/teacher --n 128
"""

import argparse
import os
import time
from pathlib import Path

from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS, ROOT

ROW_KEYS = ("model", "nfe", "cfg", "prompt_accuracy", "mfid", "diversity", "latency_ms")


def default_model() -> Path:
    bundled = ROOT / "assets" / "miniature" / "teacher"
    return bundled if bundled.is_dir() else ROOT / "runs" / "miniature" / "teacher"


def markdown_table(report: dict) -> str:
    lines = ["| model | NFE | CFG | prompt acc. | mFID | diversity | ms/image (batch) | ms (batch 1) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} ({r['steps']} steps) | {r['nfe']} | {r['cfg']:g} | {r['prompt_accuracy']:.1%} | "
                     f"{r['mfid']:.1f} | {r['diversity']:.2f} | {r['latency_ms']:.1f} | {r['latency_ms_batch1']:.1f} |")
    lines.append(f"| real images (reference) | - | - | {report['real_prompt_accuracy']:.1%} | "
                 f"{report['real_vs_real_mfid']:.1f} (floor) | {report['real_diversity']:.2f} | - | - |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="teacher pipeline folder (default: see above)")
    parser.add_argument("--name", default=None, help="model name in the rows (default: the folder's name)")
    parser.add_argument("--steps", type=int, default=25, help="steps of the teacher's own row")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale of the teacher's own row")
    parser.add_argument("--n", type=int, default=256, help="images per row")
    parser.add_argument("--seeds-per-prompt", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "miniature_teacher.json")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if not model.is_dir():
        parser.error(f"no teacher at {model}; train one (python -m trainers.miniature.teacher unet ...) or pass --model")

    import cv2
    import torch

    from sdxs_core.devices import resolve_device
    from sdxs_core.loading import load_engine
    from trainers.miniature.classifier import load_classifier
    from trainers.miniature.evaluate import evaluate_model

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    start = time.perf_counter()
    engine = load_engine(model, device=args.device)
    classifier = load_classifier()
    name = args.name or model.name
    rows, results = [], []
    for steps, cfg in ((args.steps, args.cfg), (1, 0.0)):
        result = evaluate_model(engine, args.n, steps, cfg, seeds_per_prompt=args.seeds_per_prompt, batch=args.batch,
                                classifier=classifier, name=name)
        results.append(result)
        rows.append({**{k: result[k] for k in ROW_KEYS}, "steps": steps, "latency_ms_batch1": result["latency_ms_batch1"],
                     "attribute_accuracy": result["attribute_accuracy"]})
        print(f"{name}, {steps} steps, CFG {cfg:g}: done in {result['eval_seconds']:.0f}s", flush=True)
    first = results[0]
    report = {
        "n_images": args.n,
        "rows": rows,
        "real_vs_real_mfid": first["real_vs_real_mfid"],
        "real_diversity": first["real_diversity"],
        "real_prompt_accuracy": first["real_prompt_accuracy"],
        "n_prompts": first["n_prompts"],
        "seeds_per_prompt": args.seeds_per_prompt,
        "model_path": os.path.relpath(model.resolve(), ROOT) if model.resolve().is_relative_to(ROOT) else str(model),
        "device": str(resolve_device(args.device)),
        "threads": args.threads,
        "batch": args.batch,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print()
    print(markdown_table(report))
    write_results(args.out, report, command_line("benchmarks.miniature_teacher", argv))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
