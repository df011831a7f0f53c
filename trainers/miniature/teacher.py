"""The miniature world's multi-step teacher: a small VAE, then an SD-shaped text-to-image U-Net.

Trained "the usual way" (epsilon prediction, condition dropout for CFG), saved as a diffusers
``StableDiffusionPipeline`` folder with a DPM-Solver++ scheduler, so ``sdxs_core.load_engine``
loads it unchanged. Later issues distil it into the one-step SDXS student.

    python -m trainers.miniature.teacher vae --out runs/miniature/vae
    python -m trainers.miniature.teacher unet --vae runs/miniature/vae --out assets/miniature/teacher
"""

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.ema import EMA
from ..core.pipeline_folder import write_pipeline_atomically
from . import text, world

LATENT_SIZE = 16  # 64x64 images, 4x downsampling


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE,
                block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


LAYOUTS = ("sd3", "sd4")


def teacher_unet_config(cross_attention_dim: int, layout: str = "sd3") -> dict:
    """SD's layout at miniature size.

    ``sd3`` (the shipped teacher): 3 stages, attention at the inner resolutions (8x8, 4x4) and in a mid
    block; narrow (32 channels at 16x16) and one layer per block: on two CPU cores the number of optimizer
    steps, not width, is what the first 10 M-parameter teacher lacked. Its block-removed student keeps
    attention at one resolution and 18 % of the parameters, too little to follow the teacher
    (``benchmarks/kd_fidelity.py``).

    ``sd4``: SD1.5's own layout: 4 stages (48, 64, 128, 128), attention at 16x16, 8x8 and 4x4, an
    attention-free lowest stage, 2 layers per block (9.3 M parameters, 0.63 GFLOPs). Block removal as
    SD1.5 -> SDXS-512 then keeps attention at 8x8 and 4x4 with one layer per stage: 37 % of the
    parameters (SDXS-512: 37 %), 2.08x fewer FLOPs. Sized for a GPU (a CPU gives it too few steps)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")
    common = dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, norm_num_groups=16,
                  mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=8, cross_attention_dim=cross_attention_dim)
    if layout == "sd4":
        return common | dict(layers_per_block=2, block_out_channels=(48, 64, 128, 128),
                             down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                             up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    return common | dict(layers_per_block=1, block_out_channels=(32, 64, 128),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def noise_schedule_config() -> dict:
    """SD's training schedule: the one-step student later samples at t=999 of it."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


def to_tensor(images: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    images = torch.as_tensor(images)
    return images.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _render_chunk(args) -> tuple[np.ndarray, list[str]]:
    seed, n, style = args
    batch = world.render_batch(seed, n, style=style)
    return batch["images"], batch["captions"]


def render_pool(n: int, style: str, seed: int, workers: int | None = None, chunk: int = 2048) -> tuple[torch.Tensor, list[str]]:
    """Render ``n`` training scenes once, in parallel: the world renders ~2k images/s per core, too
    slow to feed a GPU step by step, and a fixed pool costs a few hundred MB."""
    from multiprocessing import get_context

    jobs = [(seed * 1_000_003 + i, min(chunk, n - i * chunk), style) for i in range((n + chunk - 1) // chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return torch.from_numpy(np.concatenate([p[0] for p in parts])), [c for p in parts for c in p[1]]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _progress(step: int, steps: int, start: float, budget_s: float | None) -> float:
    """Fraction of training done, by steps or by the wall-time budget, whichever is further along,
    so a time-capped run still finishes its learning-rate decay."""
    by_time = (time.time() - start) / budget_s if budget_s else 0.0
    return max(step / steps, by_time)


def _lr(step: int, progress: float, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_vae(out: Path, steps: int, batch: int, device: torch.device, n_data: int, lr: float = 1e-3,
              budget_s: float | None = None, seed: int = 0, eval_n: int = 256) -> dict:
    """Reconstruction (L1 + MSE) with a tiny KL term, on both rendering styles."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    pool, _ = render_pool(n_data, "mixed", seed)
    vae = AutoencoderKL(**vae_config()).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    start, step = time.time(), 0
    bar = tqdm(total=steps, desc="vae", mininterval=5)
    while (progress := _progress(step, steps, start, budget_s)) < 1:
        x = to_tensor(pool[torch.randint(0, len(pool), (batch,))], device)
        for g in opt.param_groups:
            g["lr"] = _lr(step, progress, lr)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    vae.eval()
    stats = vae_stats(vae, device, eval_n)
    vae.register_to_config(scaling_factor=stats["scaling_factor"])
    vae.save_pretrained(out, safe_serialization=True)
    stats.update(steps=step, seconds=round(time.time() - start, 1))
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


@torch.no_grad()
def vae_stats(vae, device, n: int = 256) -> dict:
    """Reconstruction PSNR on held-out scenes, and the latent scale that makes latents unit-variance."""
    batch = world.render_batch(987_654, n, style="mixed", split="eval")["images"]
    x = to_tensor(batch, device)
    latents = vae.encode(x).latent_dist.mean
    recon = vae.decode(latents).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()
    return {"psnr_db": round(psnr, 2), "scaling_factor": round(1.0 / latents.std().item(), 5)}


@torch.no_grad()
def encode_dataset(vae, n: int, device, seed: int = 1, chunk: int = 512) -> tuple[torch.Tensor, list[str]]:
    """Pre-encode ``n`` plain-style scenes: the teacher then trains on latents (the VAE is frozen)."""
    images, captions = render_pool(n, "plain", seed)
    latents = [vae.encode(to_tensor(images[i:i + chunk], device)).latent_dist.mean.mul(vae.config.scaling_factor)
               for i in tqdm(range(0, n, chunk), desc="encode", mininterval=5)]
    return torch.cat(latents), captions


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, scheduler_config, stats: dict,
                  link_to: list[Path] = ()) -> None:
    """Write the teacher as a diffusers folder, atomically (parts identical to a ``link_to`` folder's: links)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sampler = DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++",
                                                      timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    write_pipeline_atomically(pipe, out, {"train_stats.json": json.dumps(stats, indent=2)}, link_to=link_to)


def min_snr_weight(alphas_cumprod: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (Hang et al. 2023): nearly clean steps, whose
    epsilon loss is large but teaches little about layout, stop dominating; ~3x faster convergence."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def train_teacher(vae_dir: Path, out: Path, steps: int, batch: int, device: torch.device, n_data: int,
                  lr: float = 5e-4, p_uncond: float = 0.1, budget_s: float | None = None, seed: int = 0,
                  init: Path | None = None, save_every_s: float | None = None, unet_config: dict | None = None,
                  text_steps: int = 600, layout: str = "sd3", text_from: Path | None = None) -> dict:
    """Epsilon-prediction training of the U-Net on a frozen text encoder, with captions dropped with
    probability ``p_uncond`` so CFG works at sampling. Without ``init`` the text encoder is first
    pretrained to read captions (``text.pretrain_text_encoder``); ``init`` continues from a saved
    teacher folder (its weights; the optimizer starts fresh). ``text_from``: a new U-Net of ``layout`` on
    that teacher folder's frozen text encoder (no pretraining; prompts read exactly as that teacher's)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = text.load_tokenizer()
    # fp32 master weights whatever the files hold (the shipped teacher is fp16)
    vae = AutoencoderKL.from_pretrained(vae_dir, dtype=torch.float32).to(device).eval()
    start = time.time()
    if init is not None:
        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder", dtype=torch.float32).to(device)
        unet = UNet2DConditionModel.from_pretrained(init / "unet", dtype=torch.float32).to(device)
        prior = json.loads((init / "train_stats.json").read_text()) if (init / "train_stats.json").is_file() else {}
    else:
        if text_from is not None:
            if not (text_from / "text_encoder" / "config.json").is_file():
                raise FileNotFoundError(f"text_from={text_from}: no text_encoder/ folder there (a teacher pipeline folder)")
            text_encoder = CLIPTextModel.from_pretrained(text_from / "text_encoder", dtype=torch.float32)
            text_stats = {"from": str(text_from)}
        else:
            text_encoder = CLIPTextModel(text.build_text_encoder_config(tokenizer))
            text_stats = text.pretrain_text_encoder(text_encoder, tokenizer, steps=text_steps, seed=seed)
            text_stats["seconds"] = round(time.time() - start, 1)
            print(f"text encoder: {json.dumps(text_stats)}", flush=True)
        text_encoder = text_encoder.to(device)
        unet_config = unet_config or teacher_unet_config(text_encoder.config.hidden_size, layout)
        unet = UNet2DConditionModel(**unet_config).to(device)
        prior = {"text_encoder": text_stats}
    text_encoder.requires_grad_(False).eval()
    history = prior.get("history", [{k: prior[k] for k in ("steps", "batch", "seconds") if k in prior}] if "steps" in prior else [])
    noise_sched = DDPMScheduler(**noise_schedule_config())
    alphas = noise_sched.alphas_cumprod.to(device)
    weights = min_snr_weight(alphas)

    latents, captions = encode_dataset(vae, n_data, device)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    ids, empty = ids.to(device), empty.to(device)

    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2, fused=device.type == "cuda")
    ema = EMA(unet, 0.999)
    step, last_save = 0, time.time()
    ema_offset = 10_000 if init is not None else 0  # continuing: the weights are already averaged

    def snapshot() -> dict:
        ema.copy_to(unet_eval)
        seconds = round(time.time() - start, 1)
        stats = {**{k: v for k, v in prior.items() if k not in ("steps", "batch", "seconds", "final_loss", "history")},
                 "steps": step, "batch": batch, "n_data": n_data, "seconds": seconds,
                 "final_loss": round(loss.item(), 5), "device": device.type,
                 "history": history + [{"steps": step, "batch": batch, "seconds": seconds, "device": device.type}]}
        save_pipeline(out, vae, text_encoder, tokenizer, unet_eval, noise_sched.config, stats)
        return stats

    import copy
    unet_eval = copy.deepcopy(unet)
    bar = tqdm(total=steps, desc="teacher", mininterval=5)
    while (progress := _progress(step, steps, start, budget_s)) < 1:
        idx = torch.randint(0, len(latents), (batch,), device=device)
        x0, tok = latents[idx], ids[idx]
        drop = torch.rand(batch, device=device) < p_uncond
        tok = torch.where(drop[:, None], empty.expand_as(tok), tok)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = _lr(step, progress, lr)
        with torch.no_grad():
            context = text_encoder(tok)[0]
        with _autocast(device):
            pred = unet(xt, t, context).sample
        loss = (weights[t] * (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss became {loss.item()} at step {step}; last good weights are in {out}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet, ema_offset + step)
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if save_every_s and time.time() - last_save > save_every_s:
            snapshot()
            last_save = time.time()
    bar.close()
    return snapshot()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "unet"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--vae", type=Path, help="trained VAE folder (unet stage)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--n-data", type=int, default=60_000, help="scenes rendered once and trained on")
    parser.add_argument("--minutes", type=float, default=None, help="stop early after this wall time")
    parser.add_argument("--init", type=Path, help="continue training from this teacher folder (unet stage)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--layout", choices=LAYOUTS, default="sd3", help="U-Net layout of a new teacher (see teacher_unet_config)")
    parser.add_argument("--text-from", type=Path, help="a new teacher on this teacher folder's text encoder (no pretraining)")
    parser.add_argument("--save-every", type=float, default=None, help="also save every this many minutes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads; use fewer than the cores when sharing the machine (oversubscribed "
                             "OpenMP threads slow every process down many times over)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:  # small fixed-shape convs: let cuDNN pick kernels once; TF32 for the fp32 parts
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    budget = args.minutes * 60 if args.minutes else None
    if args.stage == "vae":
        stats = train_vae(args.out, args.steps or 3000, args.batch or 64, device, n_data=args.n_data, budget_s=budget)
    else:
        if args.vae is None:
            parser.error("--vae is required for the unet stage")
        if args.init and (args.layout != "sd3" or args.text_from):
            parser.error("--init continues a teacher as it is; --layout / --text-from make a new one")
        stats = train_teacher(args.vae, args.out, args.steps or 20_000, args.batch or 64, device,
                              n_data=args.n_data, budget_s=budget, init=args.init, lr=args.lr or 5e-4,
                              save_every_s=args.save_every * 60 if args.save_every else None, layout=args.layout,
                              text_from=args.text_from)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
