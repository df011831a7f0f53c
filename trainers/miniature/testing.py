"""Tiny random teachers for the trainers' tests: the testkit pipeline, and one whose U-Net has the
teacher's SD-like layout (three stages, a mid block) so block removal has something to remove."""

from pathlib import Path

import torch


def tiny_teacher_unet_config(cross_attention_dim: int = 32) -> dict:
    """``trainers.miniature.teacher.teacher_unet_config`` at toy width, for 64x64 images and 8x latents;
    two layers per block, so block removal to one layer per block is exercised."""
    from trainers.miniature.teacher import teacher_unet_config

    cfg = teacher_unet_config(cross_attention_dim)
    cfg.update(sample_size=8, block_out_channels=(16, 32, 32), norm_num_groups=8, attention_head_dim=4, layers_per_block=2)
    return cfg


def write_tiny_teacher(out: str | Path, seed: int = 0, mid_block: bool = True) -> Path:
    """A StableDiffusionPipeline folder (tiny TAESD VAE, 2-layer CLIP, DDPM trailing); with
    ``mid_block`` its U-Net is the 3-stage SD-like one, otherwise the testkit's 2-stage SDXS-like one."""
    from diffusers import UNet2DConditionModel

    from sdxs_core.testkit import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed)
    if mid_block:
        torch.manual_seed(seed)
        pipe.unet = UNet2DConditionModel(**tiny_teacher_unet_config(pipe.text_encoder.config.hidden_size))
        pipe.register_modules(unet=pipe.unet)
    pipe.save_pretrained(out, safe_serialization=True)
    return Path(out)
