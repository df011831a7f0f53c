"""Train the miniature world's depth estimator: the depth control extractor for miniature ControlNets.

Every batch is freshly rendered (train split, both styles mixed, mildly degraded like the classifier's
so generated images still read), the target is the world's exact depth (1 = near, background 0), and
the loss is L1 plus L1 on depth gradients, which keeps object borders sharp. Scored by Pearson
correlation with the true depth on the eval split, the measure `evaluate.depth_correlation` uses.

    python -m trainers.miniature.depth --out assets/miniature/depth --steps 1500

The model class lives in `sdxs_core.depth`, so the app and the live loop load it without trainers.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from sdxs_core.depth import DEFAULT_MINIATURE_DIR, MiniatureDepth, MiniatureDepthNet, to_input

from . import world
from .classifier import degrade, fit_on_world, torch_threads
from .evaluate import depth_correlation

DEFAULT_CONFIG = {"channels": [8, 16, 32, 64, 128], "resolution": world.SIZE}


def depth_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 on depth plus L1 on its x and y finite differences; pred, target [N, H, W]."""
    l1 = (pred - target).abs().mean()
    dx = lambda d: d[:, :, 1:] - d[:, :, :-1]  # noqa: E731
    dy = lambda d: d[:, 1:, :] - d[:, :-1, :]  # noqa: E731
    grad = (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()
    return l1 + grad_weight * grad, {"l1": l1.item(), "grad": grad.item()}


def evaluate(model: MiniatureDepthNet, n: int = 1024, seed: int = 0) -> dict[str, float]:
    """Eval-split Pearson correlation (clean and degraded images) and mean absolute error. "mask_baseline"
    is what a perfect object mask with one depth for every object would score, and "order_accuracy" how
    often the nearer of two objects is predicted nearer: depth order shows only where objects overlap,
    so about half of it is guesswork for any estimator."""
    data = world.render_batch(10**9 + seed, n, style="mixed", split="eval")
    estimator = MiniatureDepth(model.eval(), next(model.parameters()).device)
    clean = estimator.estimate_batch(data["images"])
    degraded = estimator.estimate_batch(degrade(data["images"], np.random.default_rng(seed)))
    truth = data["depth"]
    two = np.array([len(s.objects) == 2 for s in data["specs"]])
    return {
        "pearson": depth_correlation(clean, truth),
        "pearson_degraded": depth_correlation(degraded, truth),
        "pearson_two_objects": depth_correlation(clean[two], truth[two]),
        "mae": float(np.abs(clean - truth).mean()),
        "mask_baseline": depth_correlation((truth > 0).astype(np.float32), truth),
        "order_accuracy": _order_accuracy(clean, data),
        "eval_images": n,
    }


def _order_accuracy(pred: np.ndarray, data: dict) -> float:
    """Share of two-object scenes (both objects visible) whose nearer object gets the larger mean depth."""
    hits = []
    for depth, masks, spec in zip(pred, data["masks"], data["specs"]):
        if len(spec.objects) == 2 and (masks == 1).any() and (masks == 2).any():
            nearer_first = spec.objects[0].depth > spec.objects[1].depth
            hits.append((depth[masks == 1].mean() > depth[masks == 2].mean()) == nearer_first)
    return float(np.mean(hits)) if hits else float("nan")


def train_depth(
    out_dir: str | None,
    steps: int = 1500,
    batch: int = 32,
    seed: int = 0,
    lr: float = 3e-3,
    grad_weight: float = 1.0,
    config: dict | None = None,
    eval_images: int = 1024,
    threads: int = 1,
    log_every: int = 100,
    device: str = "cpu",
) -> dict:
    """Train, evaluate on the eval split, save to out_dir (None: do not save). Returns the saved metrics
    plus "loss" (every step's total loss). `threads` holds only while this runs (one is fastest on a
    busy shared CPU)."""
    def batch_loss(model, x, data):
        return depth_loss(model(x), torch.from_numpy(data["depth"]).to(x.device), grad_weight)  # target [B, 64, 64]

    with torch_threads(threads):
        torch.manual_seed(seed)
        model = MiniatureDepthNet(**(config or DEFAULT_CONFIG)).to(device)
        start = time.time()
        losses = fit_on_world(model, steps, batch, seed, lr, batch_loss, prepare=to_input, degrade_strength=0.7,
                              log_every=log_every)
        metrics = {
            "steps": steps, "batch": batch, "seed": seed, "lr": lr, "grad_weight": grad_weight, "threads": threads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(time.time() - start, 1),
            "eval": evaluate(model, eval_images, seed),
        }
    if out_dir is not None:
        model.cpu().save_pretrained(out_dir, metrics)
    return {**metrics, "loss": losses}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the miniature world's depth estimator.")
    parser.add_argument("--out", default=DEFAULT_MINIATURE_DIR, help="output folder (default: assets/miniature/depth)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--grad-weight", type=float, default=1.0, help="weight of the depth-gradient L1 term")
    parser.add_argument("--eval-images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest on a busy shared CPU")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    m = train_depth(args.out, args.steps, args.batch, args.seed, args.lr, args.grad_weight,
                    eval_images=args.eval_images, threads=args.threads)
    e = m["eval"]
    print(f"{m['parameters']} parameters, {args.steps} steps in {m['train_seconds']:.0f}s; eval split ({e['eval_images']} images): "
          f"Pearson {e['pearson']:.3f} (degraded {e['pearson_degraded']:.3f}, one-depth-per-object mask "
          f"{e['mask_baseline']:.3f}), two objects {e['pearson_two_objects']:.3f}, order accuracy {e['order_accuracy']:.1%}, "
          f"MAE {e['mae']:.4f}")


if __name__ == "__main__":
    main()
