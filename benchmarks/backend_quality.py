"""What each backend precision costs in quality: the miniature evaluator (``trainers.miniature.evaluate``)
on the default model, torch fp32 against OpenVINO fp32 / bf16 / int8 / mixed, same prompts and seeds.

``quality_drop_points`` is the prompt-accuracy drop vs torch fp32 in percentage points (the issue's
bound: <= 1); mFID and, with the edges ControlNet, edge F1 beside it. ``benchmarks.latency`` reads the
drops into its rows. int8 calibrates on 32 training-split captions x 1 seed
(``evaluate.calibration_prompts``), never the held-out prompts scored here.

    python -m benchmarks.backend_quality --n 1024        # -> results/backend_quality.json
"""

import argparse
import time

import torch

from benchmarks.results_io import results_path, write_results

PRECISIONS = ("fp32", "bf16", "int8", "mixed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the bundled default model")
    parser.add_argument("--controlnet", default=None, help="edges ControlNet for edge F1 (default: none)")
    parser.add_argument("--n", type=int, default=1024, help="images per row")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="default results/backend_quality.json")
    args = parser.parse_args(argv)

    from sdxs_core.loading import load_engine
    from sdxs_core.openvino_backend import cpu_supports_bf16
    from sdxs_core.presets import DEFAULT_MODEL
    from trainers.miniature.evaluate import calibration_prompts, evaluate_model

    torch.set_num_threads(args.threads)
    model = args.model or DEFAULT_MODEL
    control = "edges" if args.controlnet else None
    rows, base = [], None
    for label, backend, precision in [("torch fp32", "torch", "fp32")] + [
            (f"openvino {p}", "openvino", p) for p in args.precisions]:
        if precision == "bf16" and backend == "openvino" and not cpu_supports_bf16():
            print(f"skipped {label}: no bf16 on this CPU")
            continue
        start = time.perf_counter()
        engine = load_engine(model, controlnet=args.controlnet, device="cpu", backend=backend, precision=precision,
                             cache_dir=args.cache_dir, calibration_prompts=calibration_prompts())
        ready_s = time.perf_counter() - start
        r = evaluate_model(engine, args.n, control_type=control, name=label, latency_calls=11)
        base = base or r
        row = {"impl": label, "backend": backend, "precision": precision,
               "prompt_accuracy": r["prompt_accuracy"],
               "quality_drop_points": round(100 * (base["prompt_accuracy"] - r["prompt_accuracy"]), 2),
               "mfid": r["mfid"], "edge_f1": r["edge_f1"], "latency_ms_batch1": r["latency_ms_batch1"],
               "ready_s": round(ready_s, 1)}
        rows.append(row)
        print(row, flush=True)
    report = {"model": model, "controlnet": args.controlnet, "n_images": args.n, "threads": args.threads,
              "calibration": "32 training-split captions x 1 seed (evaluate.calibration_prompts)", "rows": rows}
    out = args.out or results_path("backend_quality_edges.json" if control else "backend_quality.json")
    write_results(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
