"""Write a tiny random SDXS-shaped pipeline as a diffusers folder, with no downloads.

Tests load it back through ``load_engine``, the same code users run on the real models:
``python -m sdxs_core.testkit --out DIR [--controlnet] [--lora]``.
"""

import argparse
import string
from pathlib import Path

import torch

from .architectures import build_controlnet, build_taesd, build_unet, tiny_unet_config

SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def build_tokenizer():
    """A CLIP BPE tokenizer over single characters: every word is spelled out, so prompts run
    past 77 tokens quickly (useful for truncation tests)."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,!?'-"
    tokens = list(chars) + [c + "</w>" for c in chars] + SPECIALS
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77,
                         bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[1], unk_token=SPECIALS[1])


def build_text_encoder(tokenizer, hidden_size: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def build_tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32, scheduler: str = "ddpm"):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, LCMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer, hidden_size=cross_attention_dim)
    unet = build_unet(tiny_unet_config(cross_attention_dim=cross_attention_dim), seed=seed)
    vae = build_taesd(size="tiny")
    sched_cls = {"ddpm": DDPMScheduler, "euler": EulerDiscreteScheduler, "lcm": LCMScheduler}[scheduler]
    kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
                  steps_offset=1)
    if scheduler != "euler":
        kwargs.update(clip_sample=False)
    sched = sched_cls(**kwargs)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_tiny_pipeline(out: str | Path, seed: int = 0, cross_attention_dim: int = 32, scheduler: str = "ddpm") -> Path:
    out = Path(out)
    pipe = build_tiny_pipeline(seed, cross_attention_dim, scheduler)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_controlnet(pipeline_dir: str | Path, out: str | Path, seed: int = 1) -> Path:
    """A ControlNet for the tiny pipeline's U-Net that visibly reacts to its control image.

    Random default init shrinks the control signal ~1000x through the condition encoder, so the
    encoder is He-initialised, the latent input quietened and the zero convs given weights:
    moving a square in the control image then moves the output by several grey levels.
    """
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_dir) / "unet")
    torch.manual_seed(seed)
    controlnet = build_controlnet(unet, vae_scale_factor=8)
    with torch.no_grad():
        for module in controlnet.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
        controlnet.conv_in.weight.mul_(0.1)
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0, 0.1)
    controlnet.save_pretrained(out, safe_serialization=True)
    return Path(out)


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def write_tiny_lora(pipeline_dir: str | Path, out: str | Path, rank: int = 4, seed: int = 2, fmt: str = "diffusers",
                    targets=ATTENTION) -> Path:
    """A random LoRA on the tiny U-Net's ``targets``, saved as a diffusers file (through diffusers'
    converter, as its training scripts save) or a PEFT folder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_dir) / "unet")
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                        target_modules=list(targets))
    torch.manual_seed(seed)  # before add_adapter: lora_A is drawn there
    unet.add_adapter(config)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    out = Path(out)
    state = get_peft_model_state_dict(unet)
    if fmt == "peft":
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(out)
        save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()}, out / "adapter_model.safetensors")
        return out
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=convert_state_dict_to_diffusers(state),
                                              safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the pipeline to")
    parser.add_argument("--controlnet", action="store_true", help="also write OUT-controlnet/")
    parser.add_argument("--lora", action="store_true", help="also write OUT-lora/ (diffusers format)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_pipeline(args.out, seed=args.seed)
    print(f"tiny pipeline: {path}")
    if args.controlnet:
        print(f"tiny ControlNet: {write_tiny_controlnet(path, f'{args.out}-controlnet')}")
    if args.lora:
        print(f"tiny LoRA: {write_tiny_lora(path, f'{args.out}-lora')}")


if __name__ == "__main__":
    main()
