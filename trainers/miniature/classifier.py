"""The evaluator's instrument: a small CNN that reads a miniature-world image back into attributes.

A generated image is judged by whether this classifier recovers what its caption states, and its pooled
features stand in for Inception's in an FID-like metric. Two objects are read in canonical order (top
or left first, relation "above" or "left of"): "A below B" and "B above A" are the same picture, so no
image can tell which order its caption used; `caption_correct` compares in that order too.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import json
import os
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save

from sdxs_core.files import atomic_write

from . import world

DEFAULT_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "assets", "miniature", "classifier"))
CANONICAL_RELATIONS = ("above", "left of")


def default_heads() -> dict[str, list[str]]:
    """Head name -> class names. Object 2, position and relation heads are ignored where they do not apply."""
    shapes, colours = list(world.SHAPES), list(world.COLOURS)
    return {
        "count": ["1", "2"],
        "shape1": shapes,
        "colour1": colours,
        "shape2": shapes,
        "colour2": colours,
        "position": list(world.POSITIONS),
        "relation": list(CANONICAL_RELATIONS),
        "background": list(world.BACKGROUNDS),
        "style": list(world.STYLES),
    }


class WorldClassifier(nn.Module):
    """Four conv stages (64 -> 4 px) with coordinate channels, since position and relation are the point,
    then a flattened 4x4 map into an MLP, so "the top object's shape" keeps where it came from."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 256, heads: dict[str, list[str]] | None = None):
        super().__init__()
        self.config = {"channels": list(channels), "hidden": hidden, "heads": heads or default_heads()}
        self.heads = self.config["heads"]
        layers, c_in = [], 5  # RGB + (x, y) coordinates
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        side = world.SIZE >> len(channels)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True))
        self.classify = nn.ModuleDict({name: nn.Linear(hidden, len(names)) for name, names in self.heads.items()})
        ramp = torch.linspace(-1, 1, world.SIZE)
        coords = torch.stack([ramp[None, :].expand(world.SIZE, -1), ramp[:, None].expand(-1, world.SIZE)])  # [2, 64, 64]
        self.register_buffer("coords", coords, persistent=False)
        self.to(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPU

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector [N, hidden] for an FID-like distance; x is [N, 3, 64, 64] in [-1, 1]."""
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1)  # [N, 5, 64, 64]
        x = x.contiguous(memory_format=torch.channels_last)
        return self.embed(self.trunk(x))  # [N, hidden]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.classify.items()}  # name -> [N, classes]


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 64, 64, 3] -> float [N, 3, 64, 64] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def targets(specs: list[world.SceneSpec], heads: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Class indices per head in canonical order; -100 (ignored by cross-entropy) where a head does not apply."""
    rows = []
    for spec in specs:
        spec = spec.canonical()
        values = {"count": str(len(spec.objects)), "background": spec.background, "style": spec.style}
        for k, obj in enumerate(spec.objects, start=1):
            values[f"shape{k}"], values[f"colour{k}"] = obj.shape, obj.colour
        values["position" if len(spec.objects) == 1 else "relation"] = spec.position or spec.relation
        rows.append(values)
    index = {name: {c: i for i, c in enumerate(names)} for name, names in heads.items()}
    return {name: torch.tensor([index[name].get(r.get(name), -100) for r in rows]) for name in heads}


def degrade(images: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Mild blur, JPEG, noise and contrast changes, so the classifier still reads imperfect generations."""
    out = images.copy()
    for k in range(len(out)):
        if rng.random() < 0.3 * strength:
            out[k] = cv2.GaussianBlur(out[k], (0, 0), rng.uniform(0.3, 1.1))
        if rng.random() < 0.3 * strength:
            quality = int(rng.integers(30, 90))
            _, buf = cv2.imencode(".jpg", out[k], [cv2.IMWRITE_JPEG_QUALITY, quality])
            out[k] = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    gain = 1 + rng.uniform(-0.06, 0.06, (len(out), 1, 1, 1)) * strength  # [N, 1, 1, 1]
    shift = rng.uniform(-6, 6, (len(out), 1, 1, 1)) * strength
    sigma = rng.uniform(0, 6, (len(out), 1, 1, 1)) * (rng.random((len(out), 1, 1, 1)) < 0.5) * strength
    noisy = (out.astype(np.float32) - 128) * gain + 128 + shift + rng.standard_normal(out.shape, np.float32) * sigma
    return np.clip(noisy, 0, 255).astype(np.uint8)


def loss_fn(model: WorldClassifier, x: torch.Tensor, y: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(x)
    per_head = {name: F.cross_entropy(logits[name], y[name], ignore_index=-100) for name in model.heads}
    return sum(per_head.values()), {name: v.item() for name, v in per_head.items()}


@torch.no_grad()
def predict_attributes(model: WorldClassifier, images: np.ndarray, batch: int = 256) -> list[world.SceneSpec]:
    """uint8 [N, 64, 64, 3] -> one canonical SceneSpec per image (no geometry; style filled in)."""
    model.eval()
    device = next(model.parameters()).device
    chosen = {name: [] for name in model.heads}
    for start in range(0, len(images), batch):
        logits = model(to_input(images[start : start + batch]).to(device))
        for name, value in logits.items():
            chosen[name] += value.argmax(1).tolist()
    specs = []
    for i in range(len(images)):
        label = {name: model.heads[name][chosen[name][i]] for name in model.heads}
        objects = tuple(world.ObjectSpec(label[f"shape{k}"], label[f"colour{k}"]) for k in range(1, int(label["count"]) + 1))
        one = len(objects) == 1
        specs.append(
            world.SceneSpec(
                objects,
                label["background"],
                position=label["position"] if one else None,
                relation=None if one else label["relation"],
                style=label["style"],
            )
        )
    return specs


def caption_correct(pred: world.SceneSpec, caption: str) -> bool:
    """True when every attribute the caption states (count, each object's shape and colour, relation or
    position, background) is what was predicted, comparing both in canonical order."""
    return pred.canonical().attributes() == world.parse_caption(caption).canonical().attributes()


def evaluate(model: WorldClassifier, n: int = 2048, seed: int = 0, split: str = "eval", degraded: bool = False) -> dict[str, float]:
    """Accuracy per head on the images where it applies, plus "caption": the share of fully correct captions."""
    data = world.render_batch(10**9 + seed, n, style="mixed", split=split)
    images = degrade(data["images"], np.random.default_rng(seed)) if degraded else data["images"]
    preds = predict_attributes(model, images)
    truth = targets(data["specs"], model.heads)
    guess = targets(preds, model.heads)
    acc = {}
    for name in model.heads:
        applies = truth[name] != -100
        acc[name] = (guess[name][applies] == truth[name][applies]).float().mean().item()
    acc["caption"] = float(np.mean([caption_correct(p, c) for p, c in zip(preds, data["captions"])]))
    return acc


def save_classifier(model: WorldClassifier, out_dir: str, metrics: dict | None = None) -> None:
    """config.json + fp16 model.safetensors (+ metrics.json), each written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    files = {"model.safetensors": save(state), "config.json": json.dumps(model.config, indent=2)}
    if metrics is not None:
        files["metrics.json"] = json.dumps(metrics, indent=2)
    for name, data in files.items():
        atomic_write(os.path.join(out_dir, name), data)


def load_classifier(path: str = DEFAULT_DIR) -> WorldClassifier:
    """Rebuild from config.json and load the weights in float32, ready for eval."""
    with open(os.path.join(path, "config.json")) as f:
        model = WorldClassifier(**json.load(f))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    model.load_state_dict(state)
    return model.eval()


@contextmanager
def torch_threads(n: int):
    """Use ``n`` threads inside the block only. The CPU is shared: when it is busy, one thread beats
    two, which wait on each other (measured here: 1.3 s against 4.3 s per step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_on_world(model: torch.nn.Module, steps: int, batch: int, seed: int, lr: float, batch_loss,
                 prepare=None, degrade_strength: float = 1.0, log_every: int = 100) -> list[float]:
    """The loop the world's instruments share: every batch freshly rendered (both styles, train
    split, degraded), so there are no epochs and nothing to memorise. ``batch_loss(model, x, data)``
    returns ``(loss, logs)``; ``prepare`` turns uint8 images into the model's input. Returns every
    step's loss."""
    prepare = prepare or to_input
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses, start = [], time.time()
    model.train()
    for step in range(steps):
        data = world.render_batch(seed * 1_000_003 + step, batch, style="mixed", split="train")
        x = prepare(degrade(data["images"], rng, strength=degrade_strength)).to(device)  # [B, 3, 64, 64]
        loss, logs = batch_loss(model, x, data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            extra = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            print(f"step {step + 1:5d}  loss {np.mean(losses[-log_every:]):.4f}  {extra}  {time.time() - start:.0f}s", flush=True)
    return losses


def _classifier_loss(model: WorldClassifier, x: torch.Tensor, data: dict):
    y = {name: t.to(x.device) for name, t in targets(data["specs"], model.heads).items()}
    loss, per_head = loss_fn(model, x, y)
    worst = max(per_head, key=per_head.get)
    return loss, {f"worst:{worst}": per_head[worst]}


def train_classifier(
    out_dir: str | None,
    steps: int = 1000,
    batch: int = 128,
    seed: int = 0,
    lr: float = 3e-3,
    config: dict | None = None,
    eval_images: int = 2048,
    threads: int = 2,
    log_every: int = 100,
    device: str = "cpu",
) -> dict:
    """Train on fresh train-split renders (both styles, degraded), evaluate on the eval split, save to
    out_dir (None: do not save). Returns the saved metrics plus "loss", the total loss of every step.

    `threads` holds only while this runs (see ``torch_threads``)."""
    with torch_threads(threads):
        torch.manual_seed(seed)
        model = WorldClassifier(**(config or {})).to(device)
        start = time.time()
        losses = fit_on_world(model, steps, batch, seed, lr, _classifier_loss, log_every=log_every)
        metrics = {
            "steps": steps,
            "batch": batch,
            "seed": seed,
            "threads": threads,
            "train_seconds": round(time.time() - start, 1),
            "clean": evaluate(model, eval_images, seed),
            "degraded": evaluate(model, eval_images, seed, degraded=True),
        }
    if out_dir is not None:
        save_classifier(model.cpu(), out_dir, metrics)
    return {**metrics, "loss": losses}


def format_table(metrics: dict) -> str:
    rows = [f"{'head':<11} {'clean':>7} {'degraded':>9}"]
    for name in metrics["clean"]:
        rows.append(f"{name:<11} {metrics['clean'][name]:>7.2%} {metrics['degraded'][name]:>9.2%}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the miniature world's attribute classifier.")
    parser.add_argument("--out", default=DEFAULT_DIR, help="output folder (default: assets/miniature/classifier)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; 1 is faster on a busy shared CPU")
    args = parser.parse_args(argv)
    metrics = train_classifier(args.out, args.steps, args.batch, args.seed, args.lr, threads=args.threads)
    print(f"held-out (eval split) accuracy after {args.steps} steps, {metrics['train_seconds']:.0f}s:")
    print(format_table(metrics))


if __name__ == "__main__":
    main()
