"""What fits what: ControlNets, LoRAs and decoders against a U-Net, decided before anything is changed.

One module for every fit rule, so the loaders, the engine and the app's catalogue judge a pairing
the same way. Checks from configs and safetensors headers load no weights: the catalogue can list
only what fits the loaded base without reading a single adapter into memory.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import IncompatibleWeightsError, SDXSError


@dataclass(frozen=True)
class BaseShape:
    """The U-Net layout an adapter must match."""

    cross_attention_dim: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int

    @classmethod
    def from_config(cls, cfg) -> "BaseShape":
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
        return cls(int(get("cross_attention_dim")), tuple(get("block_out_channels")), int(get("layers_per_block")))

    def __str__(self) -> str:
        return f"cross-attn {self.cross_attention_dim}, blocks {'/'.join(map(str, self.block_out_channels))}"


# The released SDXS U-Nets (from their config.json), keyed by ``Preset.base``, so hub adapters can be
# matched against a base loaded from any local copy without downloading anything.
FAMILY_SHAPES = {"sd1.5": BaseShape(768, (320, 640, 1280), 1), "sd2.1": BaseShape(1024, (320, 640, 1280), 1)}


def check_controlnet_fits(controlnet, unet) -> None:
    """A ControlNet adds residuals to the U-Net's skip connections: widths must agree exactly."""
    c, u = controlnet.config, unet.config
    if c.get("addition_embed_type") != u.get("addition_embed_type"):
        raise IncompatibleWeightsError(
            f"this ControlNet was made for another family (addition_embed_type={c.get('addition_embed_type')!r}, "
            f"e.g. an SDXL ControlNet); the loaded U-Net has {u.get('addition_embed_type')!r}")
    if c.cross_attention_dim != u.cross_attention_dim:
        raise IncompatibleWeightsError(
            f"this ControlNet was made for a base with cross-attention width {c.cross_attention_dim}; "
            f"the loaded U-Net has {u.cross_attention_dim} (e.g. an SD2.1 ControlNet on an SD1.5 model)")
    if tuple(c.block_out_channels) != tuple(u.block_out_channels) or c.layers_per_block != u.layers_per_block:
        raise IncompatibleWeightsError(
            f"this ControlNet's blocks {tuple(c.block_out_channels)} x{c.layers_per_block} do not match the "
            f"U-Net's {tuple(u.block_out_channels)} x{u.layers_per_block}: it was made for another U-Net")


def check_vae_fits(vae, unet) -> None:
    """A decoder reads the U-Net's latents: their channel counts must agree."""
    latent, channels = vae.config.latent_channels, unet.config.out_channels
    if latent != channels:
        raise IncompatibleWeightsError(
            f"this decoder takes {latent}-channel latents; the U-Net makes {channels}: it was made for another model")


def lora_key_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes of a LoRA from its safetensors header, or None if not a LoRA."""
    from safetensors import safe_open

    file = path / "adapter_model.safetensors" if path.is_dir() else path
    try:
        with safe_open(str(file), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # safetensors raises its own error type for truncated or foreign files
        return None
    return shapes if any("lora" in k for k in shapes) else None


def lora_cross_dim(shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The cross-attention width a LoRA was made for, from its ``attn2.to_k`` down projection."""
    for key, shape in shapes.items():
        if "attn2.to_k" in key and ("lora_A" in key or "down" in key):
            return shape[-1]
    return None


def lora_fits(unet, source: str) -> bool:
    """Check a local LoRA against ``unet`` exactly as loading would, from shapes alone."""
    from .lora import check_lora_fits, lora_is_finite, read_lora

    path = Path(source)
    shapes = lora_key_shapes(path)
    if shapes is None or not lora_is_finite(path):
        return False
    prefixes = ("unet.", "base_model.model.")
    if all(k.startswith(prefixes) for k in shapes):
        state = {k.removeprefix("unet.").removeprefix("base_model.model."): torch.empty(s, device="meta")
                 for k, s in shapes.items()}
    else:  # kohya and other namings: let diffusers' converter rename the keys (LoRAs are small)
        try:
            state = read_lora(path)[0]
        except SDXSError:
            return False
    try:
        check_lora_fits(unet, state)
    except IncompatibleWeightsError:
        return False
    return True
