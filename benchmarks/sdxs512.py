"""SDXS-512's architecture at full size with random weights: nothing to download, the same networks
(and so the same speed) as ``IDKiro/sdxs-512-0.9``, and, with ``write``, as folders the app, the CLI
and the live benchmark load like any downloaded model.

    python -m benchmarks.sdxs512 /tmp/sdxs512     # -> /tmp/sdxs512/sdxs-512-random, controlnet-sketch-512-random
"""

import argparse
import json
from pathlib import Path

import torch

PIPELINE, CONTROLNET = "sdxs-512-random", "controlnet-sketch-512-random"


def random_sdxs512_components() -> dict:
    """SDXS-512 (SD1.5 family) at full size with random weights: an SD1.5-sized CLIP text encoder, the
    315.7 M-param U-Net, default TAESD, DDPM with "trailing" spacing so the one step is t=999."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdxs_core.architectures import build_sdxs512_unet, build_taesd
    from sdxs_core.testkit import build_tokenizer

    torch.manual_seed(0)  # the same weights every run, so the OpenVINO cache can serve a second run
    tokenizer = build_tokenizer()  # CLIP's real vocab is not available offline; every prompt is 77 tokens anyway
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, timestep_spacing="trailing", steps_offset=1)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, unet=build_sdxs512_unet(),
                vae=build_taesd(), scheduler=scheduler)


def write(out: str | Path) -> tuple[Path, Path]:
    """A diffusers pipeline folder and a sketch ControlNet folder (SDXS's ControlNet: the U-Net's encoder
    copied, ``architectures.build_controlnet``) under ``out``; folders already written are kept."""
    from diffusers import StableDiffusionPipeline

    from sdxs_core.architectures import build_controlnet

    out = Path(out)
    pipe_dir, cn_dir = out / PIPELINE, out / CONTROLNET
    if not (pipe_dir / "model_index.json").is_file() or not (cn_dir / "config.json").is_file():
        parts = random_sdxs512_components()
        torch.manual_seed(1)
        controlnet = build_controlnet(parts["unet"])
        StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(pipe_dir)
        controlnet.save_pretrained(cn_dir)
        (cn_dir / "train_info.json").write_text(json.dumps({"control_type": "sketch", "weights": "random"}))
    return pipe_dir, cn_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    for path in write(parser.parse_args(argv).out):
        print(path)


if __name__ == "__main__":
    main()
