"""A pipeline folder's parts, loaded for training: all components in fp32, or just its codec."""

import json
import os
from pathlib import Path

import torch


def load_components(path: str | os.PathLike, device) -> dict:
    """A pipeline folder's components in fp32 through ``sdxs_core`` (its offline-aware errors)."""
    from sdxs_core.loading import load_pipeline_components

    return load_pipeline_components(Path(path), torch.device(device), torch.float32)


def vae_dir(folder: str | os.PathLike) -> Path:
    """A codec's own folder: a pipeline folder's ``vae``, else ``folder`` itself."""
    folder = Path(folder)
    return folder / "vae" if (folder / "vae").is_dir() else folder


def load_vae(folder: str | os.PathLike):
    """The image codec of a pipeline folder (its ``vae``) or a codec's own folder, of the class its
    config names: an AutoencoderTiny (what the decoder method exports) or an AutoencoderKL (a teacher's)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    folder = vae_dir(folder)
    classes = {"AutoencoderTiny": AutoencoderTiny, "AutoencoderKL": AutoencoderKL}
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in classes:
        raise ValueError(f"{folder} holds a {name}, not one of {sorted(classes)}")
    return classes[name].from_pretrained(folder)
