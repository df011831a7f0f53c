"""Depth models for the depth control extractor: one small estimator of our own, or any transformers one.

- ``MiniatureDepthNet``: a ~0.4 M-parameter U-Net trained on the miniature world's exact depth maps
  (``python -m trainers.miniature.depth``), shipped in ``assets/miniature/depth``. It reads a 64x64 RGB
  frame and returns absolute depth in [0, 1] on the world's scale: 1 = nearest, background 0.
- ``TransformersDepth``: Depth Anything / DPT (any ``AutoModelForDepthEstimation``) from a local folder
  holding the model and its image processor. These predict relative inverse depth (larger = nearer) with
  no fixed scale, so the extractor normalises their maps per frame.

Both take one ``[H, W, 3] uint8`` RGB frame and return float32 ``[H, W]`` at the frame's size, larger =
nearer. Importing this module needs only torch, numpy, cv2 and safetensors; transformers is imported
when a transformers model is loaded. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import os
import tempfile

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ModelNotFoundError, NotAPipelineError

DEFAULT_MINIATURE_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "assets", "miniature", "depth"))
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


# ---- the miniature estimator ------------------------------------------------------------------
def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class MiniatureDepthNet(nn.Module):
    """A small U-Net: a full-resolution stem, stride-2 stages down to 8x8 (where the receptive field spans
    the whole frame, so occlusion order can be read), then upsample + skip + conv back to full size.

    Config-first: the constructor arguments are what ``save_pretrained`` writes to config.json."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 96), resolution: int = 64):
        super().__init__()
        if len(channels) < 2 or resolution % (1 << (len(channels) - 1)):
            raise ValueError(f"resolution {resolution} must be divisible by 2^{len(channels) - 1} (channels={channels})")
        self.config = {"channels": list(channels), "resolution": resolution}
        self.resolution = resolution
        self.stem = _conv(3, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(_conv(a, b, stride=2), _conv(b, b)) for a, b in zip(channels[:-1], channels[1:])
        )
        self.up = nn.ModuleList(_conv(b + a, a) for a, b in zip(channels[:-1], channels[1:]))
        self.head = nn.Conv2d(channels[0], 1, 1)
        self.to(memory_format=torch.channels_last)  # faster convolutions on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, R, R] RGB in [-1, 1] -> depth [N, R, R] in [0, 1] (1 = near)."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # [N, c0, R, R]
        skips = []
        for stage in self.down:
            skips.append(x)
            x = stage(x)  # halves the side
        for stage, skip in zip(reversed(self.up), reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], 1))
        return torch.sigmoid(self.head(x))[:, 0]  # [N, R, R]

    # -- saving and loading, diffusers-style: config.json + model.safetensors, each written atomically
    def save_pretrained(self, out_dir: str | os.PathLike, metrics: dict | None = None) -> None:
        """Write config.json and model.safetensors (fp16 when fp32 would exceed 1 MB), plus metrics.json
        when given; each goes to a temp file in `out_dir` and is then os.replace'd, so a reader never
        sees half a model."""
        from safetensors.torch import save_file

        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if sum(v.numel() * v.element_size() for v in state.values()) > 1 << 20:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        files = {WEIGHTS_NAME: lambda p: save_file(state, p), CONFIG_NAME: lambda p: _write_json(self.config, p)}
        if metrics is not None:
            files["metrics.json"] = lambda p: _write_json(metrics, p)
        for name, write in files.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
            os.close(fd)
            try:
                write(tmp)
                os.chmod(tmp, 0o644)  # mkstemp makes files private; these are meant to be shared
                os.replace(tmp, os.path.join(out_dir, name))
            except BaseException:
                os.unlink(tmp)
                raise

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = DEFAULT_MINIATURE_DIR) -> MiniatureDepthNet:
        """Rebuild from config.json and load the weights in float32, in eval mode."""
        from safetensors.torch import load_file

        path = os.fspath(path)
        if not is_miniature_dir(path):
            raise ModelNotFoundError(f"no miniature depth estimator in '{path}' (expected {CONFIG_NAME} and "
                                     f"{WEIGHTS_NAME}); train one: python -m trainers.miniature.depth --out {path}")
        with open(os.path.join(path, CONFIG_NAME)) as f:
            model = cls(**json.load(f))
        state = load_file(os.path.join(path, WEIGHTS_NAME))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return model.eval()


def _write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def is_miniature_dir(path: str | os.PathLike) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_NAME, WEIGHTS_NAME))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (the estimator's input, in training too)."""
    return torch.tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # a copy: inputs may be read-only


class MiniatureDepth:
    """The trained estimator as a frame -> depth function, and as the evaluator's batch estimator."""

    def __init__(self, model: MiniatureDepthNet, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_MINIATURE_DIR, device: str | torch.device = "cpu") -> MiniatureDepth:
        return cls(MiniatureDepthNet.from_pretrained(path), device)

    @torch.no_grad()
    def estimate_batch(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """uint8 [N, R, R, 3] at the model's resolution -> float32 [N, R, R] in [0, 1], 1 = near.
        This is the `depth_estimator` signature that `trainers.miniature.evaluate.evaluate_model` takes."""
        r = self.model.resolution
        if images.ndim != 4 or images.shape[1:] != (r, r, 3):
            raise ValueError(f"expected uint8 images [N, {r}, {r}, 3], got {images.shape}")
        parts = [self.model(to_input(images[s : s + batch]).to(self.device)).float().cpu() for s in range(0, len(images), batch)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, r, r), np.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 -> float32 [H, W] in [0, 1]: area-resize to the model's resolution, estimate,
        bilinear-resize back to the frame's size."""
        h, w = rgb.shape[:2]
        r = self.model.resolution
        small = rgb if (h, w) == (r, r) else cv2.resize(rgb, (r, r), interpolation=cv2.INTER_AREA)
        depth = self.estimate_batch(small[None])[0]
        return depth if (h, w) == (r, r) else cv2.resize(depth, (w, h), interpolation=cv2.INTER_LINEAR)


# ---- transformers models (Depth Anything, DPT) from a local folder ----------------------------
def is_transformers_dir(path: str | os.PathLike) -> bool:
    """A folder with a transformers config.json (model_type set) and a preprocessor_config.json."""
    try:
        with open(os.path.join(path, CONFIG_NAME)) as f:
            has_type = "model_type" in json.load(f)
    except (OSError, ValueError):
        return False
    return has_type and os.path.isfile(os.path.join(path, "preprocessor_config.json"))


class TransformersDepth:
    """``AutoModelForDepthEstimation`` + its image processor from a local folder, never the hub."""

    def __init__(self, model, processor, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        # Relative models (DPT, Depth Anything) predict inverse depth; metric ones (Depth Anything metric,
        # ZoeDepth) predict metres, which are inverted so that larger means nearer for every model.
        config = model.config
        self.metric = getattr(config, "depth_estimation_type", None) == "metric" or config.model_type == "zoedepth"

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> TransformersDepth:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ModelNotFoundError(f"depth model folder '{path}' does not exist")
        if not is_transformers_dir(path):
            raise NotAPipelineError(f"'{path}' is not a transformers depth model folder (need config.json with a "
                                    f"model_type and preprocessor_config.json, e.g. a local copy of "
                                    f"depth-anything/Depth-Anything-V2-Small-hf)")
        model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True, **({"dtype": dtype} if dtype else {}))
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor, device)

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 -> float32 [H, W] relative inverse depth (larger = nearer, arbitrary scale),
        bilinear-resized from the model's output to the frame's size (metric depth d becomes 1 / d)."""
        h, w = rgb.shape[:2]
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        depth = self.model(pixel_values=pixels).predicted_depth  # [1, h', w']
        depth = F.interpolate(depth[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        if self.metric:
            depth = 1.0 / depth.clamp_min(1e-3)
        return depth.cpu().numpy()
