"""Architecture builders: the real SDXS-512 shapes and tiny versions of the same shapes.

Benchmarks build the real architecture with random weights (no download needed to measure speed);
tests build the tiny versions through the same functions, so both exercise one code path.
"""

import torch
from diffusers import AutoencoderTiny, ControlNetModel, UNet2DConditionModel

SDXS512_UNET_PARAMS = 315.7e6  # measured from IDKiro/sdxs-512-dreamshaper's unet/config.json


def sdxs512_unet_config(cross_attention_dim: int = 768) -> dict:
    """SDXS-512's U-Net: SD's U-Net with the mid stage, the last down / first up stage and the
    highest-resolution transformer blocks removed (paper section 3.1)."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4,
        block_out_channels=(320, 640, 1280), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None, attention_head_dim=8, cross_attention_dim=cross_attention_dim,
    )


def tiny_unet_config(cross_attention_dim: int = 32, mid_block: bool = False, sample_size: int = 8) -> dict:
    """The same layout at toy size (one plain and one cross-attention stage)."""
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_block else None,
        attention_head_dim=8, cross_attention_dim=cross_attention_dim,
    )


def build_unet(config: dict, seed: int | None = 0) -> UNet2DConditionModel:
    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DConditionModel(**config)


def build_sdxs512_unet(cross_attention_dim: int = 768, seed: int | None = 0) -> UNet2DConditionModel:
    unet = build_unet(sdxs512_unet_config(cross_attention_dim), seed)
    n = count_params(unet)
    # The builder is only useful if it is the real architecture: fail loudly if diffusers drifts.
    assert abs(n - SDXS512_UNET_PARAMS) < 0.05e6 or cross_attention_dim != 768, f"SDXS-512 U-Net has {n / 1e6:.1f} M params"
    return unet


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_controlnet(unet: UNet2DConditionModel, vae_scale_factor: int = 8, conditioning_channels: int = 3,
                     copy_weights: bool = True) -> ControlNetModel:
    """A ControlNet whose encoder copies ``unet``'s, including U-Nets without a mid block.

    ``ControlNetModel.from_unet`` fails when ``mid_block_type`` is None; here such a U-Net gets a
    plain resnet mid block (no attention), whose output passes through the zero-initialised
    ``controlnet_mid_block`` and so starts as a no-op, as the U-Net still adds a mid residual.
    """
    cfg = unet.config
    n_down = vae_scale_factor.bit_length() - 1  # log2: one stride-2 conv per halving
    cond_channels = tuple(16 * 2 ** i for i in range(n_down)) + (min(256, cfg.block_out_channels[0]),)
    controlnet = ControlNetModel(
        in_channels=cfg.in_channels, conditioning_channels=conditioning_channels,
        flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift,
        down_block_types=cfg.down_block_types,
        mid_block_type="UNetMidBlock2D" if cfg.mid_block_type is None else cfg.mid_block_type,
        only_cross_attention=cfg.only_cross_attention, block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block, downsample_padding=cfg.downsample_padding,
        mid_block_scale_factor=cfg.mid_block_scale_factor, act_fn=cfg.act_fn,
        norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
        cross_attention_dim=cfg.cross_attention_dim, transformer_layers_per_block=cfg.transformer_layers_per_block,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        use_linear_projection=cfg.use_linear_projection, upcast_attention=cfg.upcast_attention,
        resnet_time_scale_shift=cfg.resnet_time_scale_shift,
        conditioning_embedding_out_channels=cond_channels,
    )
    if copy_weights:
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks"):
            getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        if unet.mid_block is not None:
            controlnet.mid_block.load_state_dict(unet.mid_block.state_dict())
    return controlnet


TAESD_SIZES = {"taesd": (64, 3), "half": (32, 3), "tiny": (8, 1)}  # name -> (width, blocks per stage)


def build_taesd(latent_channels: int = 4, size: str = "taesd", factor: int = 8) -> AutoencoderTiny:
    """A TAESD-family autoencoder: conv + ReLU residual blocks, no norm, no attention (paper section 3.1).

    ``factor`` 8 at size ``taesd`` is TAESD itself (a 1.22 M-parameter decoder); other factors keep
    one stage per 2x resampling (the miniature VAE downsamples 4x). ``half`` (32 wide) is the
    miniature world's: its VAE decoder is itself small, and TAESD's 64 channels at full resolution
    would cost more than it. ``tiny`` is for tests."""
    if size not in TAESD_SIZES:
        raise ValueError(f"size={size!r} must be one of {', '.join(TAESD_SIZES)}")
    if factor == 8 and size == "taesd":
        return AutoencoderTiny(latent_channels=latent_channels)
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two >= 2, got {factor}")
    n = factor.bit_length()  # stages: one more than the number of 2x resamplings
    width, blocks = TAESD_SIZES[size]
    return AutoencoderTiny(
        latent_channels=latent_channels,
        encoder_block_out_channels=(width,) * n, decoder_block_out_channels=(width,) * n,
        num_encoder_blocks=(1,) + (blocks,) * (n - 1), num_decoder_blocks=(blocks,) * (n - 1) + (1,),
    )
