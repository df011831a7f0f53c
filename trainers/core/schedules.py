"""Annealed hyperparameters (SSD's alpha and lambda_FM start high and are lowered during training)."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Anneal:
    """``start`` at step 0 to ``end`` at ``steps`` (then held), linearly, by a half cosine, or constant."""

    start: float
    end: float
    steps: int
    kind: str = "linear"  # linear | cosine | constant

    def __post_init__(self):
        if self.kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"anneal kind {self.kind!r} must be linear, cosine or constant")
        if self.steps < 1:
            raise ValueError(f"anneal steps={self.steps} must be >= 1")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        p = min(max(step / self.steps, 0.0), 1.0)
        if self.kind == "cosine":
            p = 0.5 * (1 - math.cos(math.pi * p))
        return self.start + (self.end - self.start) * p


def lr_at(step: int, base: float, warmup: int, schedule: str = "constant", progress: float = 0.0) -> float:
    """Linear warmup, then constant or a half cosine to 0 at ``progress`` 1 (the share of the run done:
    of max_steps, or of the wall-time budget when that runs out first)."""
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        scale *= 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return base * scale
