"""Tiny image decoder distillation (paper section 3.1, Eq. 5, Fig. 2a).

Frozen:  the teacher (its ODE sampler made the latents z, cached) and the teacher's VAE decoder,
         which turns z into the target image x~.
Trained: a TAESD-family AutoencoderTiny (conv + ReLU residual blocks, no norm, no attention) and a
         small conv discriminator.
Loss:    ||G(z)_down - x~_down||_1 (8x average-pooled; less on small images) + lambda_GAN * hinge GAN;
         the discriminator gets the hinge loss. Beyond the paper: optionally lambda_edge * the L1 on
         pixel differences (``gradient_l1``; the miniature world's style is a 1-px outline), and the tiny
         encoder is fitted too (L1 to z), so the folder also works for image-to-image.
Data:    the teacher's cached ODE latents, or for the miniature world its renders through the VAE
         (``latent_source: world``: 16k scenes instead of 1k samples; ``world_style: mixed`` renders half
         of them pastel, so a style LoRA's images decode as its latents say). ``latent_noise`` perturbs each
         latent (per-sample sigma drawn in [0, latent_noise]) and targets the VAE's decode of the
         perturbed latent: a one-step student's latents lie off the data the decoder saw, and a
         decoder fitted only on clean latents answers there with blotchy textures the VAE does not make.
         ``student`` adds the latents the shipped decoder really gets: the one-step student's, on the
         same scenes' captions, text-only and with each of ``student_controlnets`` (on the scene's
         control map from the live loop's extractor) and ``student_loras``; the target is still the
         VAE's decode, so the decoder learns the VAE's answer where the student's latents lie.

    python -m trainers.methods.decoder --config trainers/configs/decoder_miniature.yaml
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sdxs_core.architectures import TAESD_SIZES, build_taesd
from trainers.core.components import vae_dir
from trainers.core.loop import Phase
from trainers.core.losses import Discriminator, downsampled_l1, gradient_l1, hinge_d_loss, hinge_g_loss, unwrap
from trainers.core.method import Method, PairConfig, borrowed, main
from trainers.core.pipeline_folder import save_pipeline_folder


class Codec(torch.nn.Module):
    """The AutoencoderTiny's decode (and encode) as one forward, so accelerate's wrapper sees it."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def forward(self, z, images=None):
        decoded = self.ae.decode(z, return_dict=False)[0].float()
        encoded = self.ae.encode(images, return_dict=False)[0].float() if images is not None else None
        return decoded, encoded


@dataclass
class DecoderConfig(PairConfig):
    decoder_size: str = "taesd"  # taesd (1.2 M-param decoder at 8x) | half (32 wide) | tiny (tests)
    lambda_gan: float = 0.1
    gan_start: int = 0  # steps of L1 only before the GAN term
    downsample: int = 8
    lambda_edge: float = 0.0  # weight of the L1 on pixel differences (sharp edges, thin lines); 0 = off
    encoder_weight: float = 1.0  # 0 = leave the tiny encoder untrained
    latent_source: str = "pairs"  # pairs (the teacher's ODE latents) | world (miniature renders, VAE-encoded)
    num_images: int = 16384  # world: rendered scenes
    world_style: str = "plain"  # world: the renders' style, plain | pastel | mixed (each scene draws one)
    latent_noise: float = 0.0  # max sigma of the Gaussian perturbation of each latent (0 = none)
    student: str = ""  # world: a one-step pipeline folder whose latents join the data ("" = none)
    student_controlnets: list = field(default_factory=list)  # ControlNet folders (type: train_info.json / name)
    student_loras: list = field(default_factory=list)  # LoRA files or folders for the student
    decoder_init: str = ""  # a tiny decoder to continue (pipeline or AutoencoderTiny folder); "" = a new one
    disc_channels: int = 32
    lr: float = 2e-4

    method = "decoder"

    def errors(self):
        e = super().errors()
        if self.decoder_size not in TAESD_SIZES:
            e.append(f"decoder_size={self.decoder_size!r} must be one of {', '.join(TAESD_SIZES)}")
        if self.latent_source not in ("pairs", "world"):
            e.append(f"latent_source={self.latent_source!r} must be pairs or world")
        if self.lambda_edge < 0:
            e.append(f"lambda_edge={self.lambda_edge} must be >= 0")
        if self.world_style not in ("plain", "pastel", "mixed"):
            e.append(f"world_style={self.world_style!r} must be plain, pastel or mixed")
        elif self.world_style != "plain" and self.latent_source != "world":
            e.append(f"world_style={self.world_style!r} styles the world renders: set latent_source: world")
        if self.num_images < 1 or self.latent_noise < 0:
            e.append("num_images must be >= 1 and latent_noise >= 0")
        if (self.student_controlnets or self.student_loras) and not self.student:
            e.append("student_controlnets / student_loras need a student pipeline folder")
        if self.student and self.latent_source != "world":
            e.append("student latents join the world renders: set latent_source: world")
        if self.student and not (Path(self.student) / "model_index.json").is_file():
            e.append(f"student={self.student!r} is not a pipeline folder (no model_index.json)")
        for folder in self.student_controlnets:
            if not (Path(folder) / "config.json").is_file():
                e.append(f"student_controlnets: {folder!r} is not a ControlNetModel folder (no config.json)")
        for lora in self.student_loras:
            if not Path(lora).exists():
                e.append(f"student_loras: {lora!r} does not exist")
        if self.decoder_init:
            config = vae_dir(self.decoder_init) / "config.json"
            if not config.is_file() or json.loads(config.read_text()).get("_class_name") != "AutoencoderTiny":
                e.append(f"decoder_init={self.decoder_init!r} is not an AutoencoderTiny or a pipeline folder with one")
        return e


@torch.no_grad()
def student_latents(student: str, controlnets: list, loras: list, captions: list[str], images: np.ndarray,
                    device, batch: int = 256) -> torch.Tensor:
    """The one-step student's latents for the scenes (``captions``, rendered ``images``; seed i for scene
    i): scene i goes to variant i mod V of text-only, each ControlNet (on the scene's control map, as the
    live loop extracts it) and each LoRA, so every variant covers an equal share of the scenes."""
    from sdxs_core.control import extract
    from sdxs_core.loading import load_controlnet, load_engine
    from sdxs_core.catalogue import control_type_of

    engine = load_engine(student, device=device, dtype=torch.float32, graphs=False)
    variants = [("text", None), *(("controlnet", c) for c in controlnets), *(("lora", lo) for lo in loras)]
    out = [None] * len(captions)
    bar = tqdm(total=len(captions), desc="student latents", unit="img")
    for k, (kind, source) in enumerate(variants):
        which = list(range(k, len(captions), len(variants)))
        extra, control_type = {}, None
        if kind == "controlnet":
            control_type = control_type_of(Path(source))
            if not control_type:
                raise ValueError(f"{source}: no control type in train_info.json or the folder name")
            engine.set_controlnet(load_controlnet(source, engine.device, engine.dtype))
        elif kind == "lora":
            name = engine.load_lora(source)
        for s in range(0, len(which), batch):
            idx = which[s:s + batch]
            if control_type:
                extra = {"control_image": [extract(control_type, images[i]).image for i in idx]}
            latents = engine.generate([captions[i] for i in idx], seed=idx, output_type="latent", **extra).images
            for i, z in zip(idx, latents.float().cpu()):
                out[i] = z
            bar.update(len(idx))
        if kind == "controlnet":
            engine.set_controlnet(None)
        elif kind == "lora":
            engine.unload_lora(name)
    bar.close()
    return torch.stack(out)


class DecoderDistill(Method):
    config_cls = DecoderConfig
    ema_target = "decoder"

    def setup(self, accelerator):
        teacher = self.load_teacher(accelerator)
        if self.config.latent_source == "world":
            from trainers.methods.controlnets import world_data

            from trainers.miniature import world

            c = self.config
            real = world.render_batch(c.seed, c.num_images, style=c.world_style)
            self.pairs = world_data(teacher["vae"], c.num_images, c.seed, None, real=real)
            if c.student:  # the student's latents for the same scenes
                z = student_latents(c.student, c.student_controlnets, c.student_loras, list(real["captions"]),
                                    real["images"], self.device)
                latents = torch.cat([self.pairs["latents"], z])
                self.pairs = {"latents": latents, "noise": torch.zeros_like(latents), "prompts": self.pairs["prompts"] * 2}
        else:
            self.load_pairs(accelerator)
        # the frozen VAE decodes each clean latent the same way every epoch: decode them once when
        # the images fit in memory (the miniature world's do; 2,048 at 512 px would take 6 GB)
        latents = self.pairs["latents"]
        self.targets = None
        if not self.config.latent_noise and len(latents) * 3 * self.resolution**2 * 4 <= 2**30:
            self.targets = torch.cat([self.target(latents[i:i + 64].to(self.device)).cpu()
                                      for i in range(0, len(latents), 64)])
        torch.manual_seed(self.config.seed)
        factor = 2 ** (len(teacher["vae"].config.block_out_channels) - 1)
        if self.config.decoder_init:
            from trainers.core.components import load_vae

            tiny_ae = load_vae(self.config.decoder_init).float()
        else:
            tiny_ae = build_taesd(teacher["vae"].config.latent_channels, self.config.decoder_size, factor=factor)
        self.nets = {"decoder": Codec(tiny_ae).to(self.device),
                     "discriminator": Discriminator(self.config.disc_channels).to(self.device)}
        # no checkpointing: diffusers' EncoderTiny skips its input scaling when checkpointing
        return [Phase("decoder", self.nets["decoder"], self.decoder_loss, checkpointing=False),
                Phase("discriminator", self.nets["discriminator"], self.disc_loss)]

    @torch.no_grad()
    def target(self, z):
        """x~ = the teacher VAE's image of z, in [-1, 1]; the VAE always runs in fp32."""
        vae = self.teacher["vae"]
        with torch.autocast(z.device.type, enabled=False):
            return vae.decode(z.float() / vae.config.scaling_factor, return_dict=False)[0].float().clamp(-1, 1)

    def batch(self, step, micro, accelerator):
        batch = super().batch(step, micro, accelerator)
        if self.config.latent_noise:
            z = batch["latents"]
            sigma = torch.rand(z.shape[0], 1, 1, 1, generator=batch["generator"], device=z.device) * self.config.latent_noise
            batch["latents"] = z + sigma * torch.randn(z.shape, generator=batch["generator"], device=z.device, dtype=z.dtype)
        batch["target"] = (self.targets[batch["index"]].to(self.device) if self.targets is not None
                           else self.target(batch["latents"]))
        return batch

    def decoder_loss(self, batch, step):
        z, x_t = batch["latents"], batch["target"]
        x, z_enc = self.nets["decoder"](z, x_t if self.config.encoder_weight else None)
        batch["fake"] = x.detach()
        l1 = downsampled_l1(x, x_t, self.config.downsample)
        loss, logs = l1, {"l1": l1.item()}
        if self.config.lambda_edge:
            edge = gradient_l1(x, x_t)
            loss, logs["edge_l1"] = loss + self.config.lambda_edge * edge, edge.item()
        if self.config.lambda_gan and step >= self.config.gan_start:
            disc = self.nets["discriminator"]
            disc.requires_grad_(False)  # the generator's loss must not leave gradients on D
            gan = hinge_g_loss(disc(x))
            disc.requires_grad_(True)
            loss, logs["g_gan"] = loss + self.config.lambda_gan * gan, gan.item()
        if self.config.encoder_weight:
            enc = F.l1_loss(z_enc, z.float())
            loss, logs["encoder_l1"] = loss + self.config.encoder_weight * enc, enc.item()
        return loss, logs

    def disc_loss(self, batch, step):
        if not self.config.lambda_gan or step < self.config.gan_start:
            return batch["target"].new_zeros(()), {}
        disc = self.nets["discriminator"]
        return hinge_d_loss(disc(batch["target"]), disc(batch["fake"]))

    @torch.no_grad()
    def validation_images(self):
        """The tiny decoder's images of the first cached latents (top) and the teacher VAE's (bottom)."""
        decoder = unwrap(self.nets["decoder"]).ae
        z = self.pairs["latents"][: len(self.config.val_prompts)].to(self.device)
        with borrowed(decoder):
            ours = self.engine(self.teacher["unet"], vae=decoder).decode(z)
        ref = self.target(z) / 2 + 0.5
        return torch.cat([ours, ref], dim=2).permute(0, 2, 3, 1).cpu().numpy()

    def export(self, out, nets, info):
        """The teacher pipeline with the tiny decoder as its VAE: ``out/vae`` is the AutoencoderTiny folder."""
        return save_pipeline_folder(out, self.teacher, vae=nets["decoder"].ae.float(), one_step=False, extra=info)


if __name__ == "__main__":
    main(DecoderDistill, doc=__doc__)
