"""A ControlNet for the one-step, mid-block-less student U-Net, in two stages.

``stage: kd`` (paper section 3.1, Fig. 2b): ControlNet distillation.
  Frozen:  the teacher U-Net + the teacher's pretrained ControlNet; the student U-Net; the text encoder.
  Trained: the student ControlNet (``sdxs_core.architectures.build_controlnet``: encoder copied from
           the student U-Net, zero convs at zero), or ``controlnet`` to continue one.
  Loss:    the ControlNets are combined with their U-Nets and both pairs see the same noisy x_t and
           the same control image: output MSE + lambda_F * feature MSE on the U-Net *decoder* only
           (a ControlNet does not change the encoder's features).
``stage: ssd`` (paper section 3.2, "ControlNet", Fig. 5): Segmented Score Distillation.
  Frozen:  the student U-Net; the teacher's ControlNet, inside both the offline and the online DM
           (a fixed feature extractor, like the text encoder); the offline U-Net.
  Trained: the student ControlNet; the online U-Net (denoising loss on the student's samples).
  Loss:    as ``ssd``. Noise, target and control form a triplet: the control image is extracted
           from the teacher's own ODE sample for that noise (not from dataset images). A share
           ``fresh_noise_ratio`` of the student's inputs gets fresh noise instead, so only the
           control image ties them to their target (the paper: this strengthens control).

Control images (``control_source``):
  extract  ``sdxs_core.control.extract(control_type, image, size=resolution)`` on the teacher's
           decoded sample, then the engine's ``prepare_control``: the very path of the live loop.
           For the miniature world, ``canny`` (the evaluator's thresholds) and ``depth`` (the
           miniature estimator, absolute normalisation) give maps in the format of its ground truth.
  world    miniature only, ``stage: kd``: x0 = the teacher VAE's latents of world renders, control =
           their ground-truth maps (``trainers.miniature.evaluate.control_maps``, ``edges``/``depth``).
           Refused for ``ssd``: a render has no noise that the teacher maps to it, so no triplet.
Output:  a ``ControlNetModel`` folder (safetensors) for ``load_engine(student, controlnet=folder)``.

    python -m trainers.methods.controlnet_ssd --config trainers/configs/controlnet_ssd_miniature.yaml
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.core.image_folder import encode_latents
from trainers.core.loop import Phase
from trainers.core.losses import DenoisingLoss, KDLoss, ScoreDistillationLoss, SSIMFeatureLoss, UNetEncoder, unwrap
from trainers.core.method import borrowed, main
from trainers.core.noise_schedule import one_step
from trainers.core.pipeline_folder import write_pipeline_atomically
from trainers.core.schedules import Anneal
from trainers.core.student import build_student, default_block_map
from trainers.methods.ssd import SSD, SSDConfig

STAGES = ("kd", "ssd")
CONTROL_SOURCES = ("extract", "world")


@dataclass
class ControlNetSSDConfig(SSDConfig):
    stage: str = "ssd"  # kd | ssd
    student: str = "copy"  # the student pipeline / U-Net folder (ssd: the one-step model); copy for tests
    teacher_controlnet: str = ""  # required: a ControlNetModel folder for the teacher's U-Net
    controlnet: str = ""  # the student ControlNet to continue (ssd: the kd output); "" = a new one
    control_type: str = "canny"  # extract: an extractor of sdxs_core.control; world: edges | depth
    control_source: str = "extract"  # extract | world (see the module docstring)
    conditioning_scale: float = 1.0
    fresh_noise_ratio: float = 0.0  # ssd: share of the student's inputs replaced by fresh noise
    lambda_f: float = 1.0  # kd: feature-KD weight
    block_map: dict = None  # kd: teacher -> student U-Net decoder blocks; None = every shape-compatible up stage
    val_steps: int = 1  # validation steps of the student U-Net (1 = one-step student)

    method = "controlnet_ssd"

    def errors(self):
        e = super().errors()
        if self.stage not in STAGES:
            e.append(f"stage={self.stage!r} must be one of {STAGES}")
        if not self.teacher_controlnet:
            e.append("teacher_controlnet is required: a ControlNetModel folder for the teacher U-Net")
        elif not (Path(self.teacher_controlnet) / "config.json").is_file():
            e.append(f"teacher_controlnet={self.teacher_controlnet!r} is not a ControlNetModel folder (no config.json)")
        if self.controlnet and not (Path(self.controlnet) / "config.json").is_file():
            e.append(f"controlnet={self.controlnet!r} is not a ControlNetModel folder (no config.json)")
        if self.control_source not in CONTROL_SOURCES:
            e.append(f"control_source={self.control_source!r} must be one of {CONTROL_SOURCES}")
        elif self.control_source == "world" and self.stage == "ssd":
            e.append("control_source='world' needs stage='kd': SSD's noise/target/control triplet needs the control "
                     "extracted from the teacher's own sample (use control_source='extract')")
        if not 0 <= self.fresh_noise_ratio <= 1:
            e.append(f"fresh_noise_ratio={self.fresh_noise_ratio} must be in [0, 1]")
        if self.fresh_ratio:
            e.append(f"fresh_ratio={self.fresh_ratio}: fresh captions would not match their pair's control image; "
                     f"use fresh_noise_ratio (fresh noise, the pair's caption and control kept)")
        if self.val_steps < 1:
            e.append(f"val_steps={self.val_steps} must be >= 1")
        return e


# ---- shared with controlnet_teacher ---------------------------------------------------------------------
class Controlled(torch.nn.Module):
    """A U-Net with a ControlNet in front, called like a plain U-Net, so the core losses
    (``unet_forward``, ``one_step``, ``KDLoss``) run it unchanged. The batch's control image is set
    with ``use``; the U-Net's blocks stay hookable as ``unet.<name>``. ``controlnet`` may be a
    zero-argument callable returning the module (the accelerate-prepared one, looked up per call)."""

    def __init__(self, unet, controlnet, conditioning_scale: float = 1.0):
        super().__init__()
        self.unet = unet
        self.get_controlnet = controlnet if not isinstance(controlnet, torch.nn.Module) else (lambda: controlnet)
        self.conditioning_scale, self.control = conditioning_scale, None

    def use(self, control: torch.Tensor) -> "Controlled":
        self.control = control  # [N, 3, H, W] in [0, 1], as the engine's prepare_control gives
        return self

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        down, mid = self.get_controlnet()(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                          controlnet_cond=self.control.to(sample.dtype),
                                          conditioning_scale=self.conditioning_scale, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)


class NetProxy(torch.nn.Module):
    """Calls ``method.nets[name]`` (accelerate's wrapper: DDP gradient sync) at call time."""

    def __init__(self, method, name: str):
        super().__init__()
        self.method, self.name = [method], name  # a list: not registered as a submodule

    def forward(self, *args, **kwargs):
        return self.method[0].nets[self.name](*args, **kwargs)


def load_controlnet(path: str, device):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, dtype=torch.float32).to(device)


def to_pil(images: torch.Tensor) -> list:
    """Decoded images ``[N, 3, H, W]`` in [0, 1] -> PIL, rounded exactly as ``generate(output_type="pil")``."""
    from sdxs_core.engine import OneStepEngine

    return OneStepEngine._postprocess(images.float().cpu(), "pil")


def world_data(vae, n: int, seed: int, control_type: str | None, style: str = "plain", chunk: int = 256,
               real: dict | None = None) -> dict:
    """World renders as training pairs: the teacher VAE's latents (encoded ``chunk`` at a time), their
    captions, zero ``noise`` (these methods draw their own), and the ground-truth control maps
    ``[N, H, W, 3] uint8`` (none when ``control_type`` is None). ``real``: the renders of
    ``world.render_batch(seed, n, style)`` when the caller already has them."""
    from trainers.miniature import world
    from trainers.miniature.evaluate import control_maps

    real = real or world.render_batch(seed, n, style=style)
    latents = encode_latents(vae, real["images"], chunk)
    data = {"noise": torch.zeros_like(latents), "latents": latents, "prompts": list(real["captions"])}
    if control_type is not None:
        data["maps"] = np.stack(control_maps(real, control_type))
    return data


def save_controlnet(controlnet, out, info: dict) -> Path:
    return write_pipeline_atomically(copy.deepcopy(controlnet).float(), out, {"train_info.json": json.dumps(info, indent=2)})


# ---- the method ---------------------------------------------------------------------------------------
class ControlNetSSD(SSD):
    config_cls = ControlNetSSDConfig
    ema_target = "controlnet"

    def setup(self, accelerator):
        from sdxs_core.architectures import build_controlnet
        from sdxs_core.fits import check_controlnet_fits

        c = self.config
        teacher = self.load_teacher(accelerator)
        self.vae_factor = 2 ** (len(teacher["vae"].config.block_out_channels) - 1)
        self.teacher_cn = load_controlnet(c.teacher_controlnet, self.device).eval().requires_grad_(False)
        check_controlnet_fits(self.teacher_cn, teacher["unet"])
        self.student_unet, self.student_info = build_student(c.student, teacher["unet"])
        self.student_unet = self.student_unet.to(self.device).eval().requires_grad_(False)
        cn = load_controlnet(c.controlnet, self.device) if c.controlnet else \
            build_controlnet(self.student_unet, self.vae_factor).to(self.device)
        check_controlnet_fits(cn, self.student_unet)
        self.nets = {"controlnet": cn.requires_grad_(True)}
        self.student = Controlled(self.student_unet, lambda: self.nets["controlnet"], c.conditioning_scale)
        self.control_engine = self.engine(teacher["unet"])  # decode + prepare_control, as the live loop
        self.extracted: dict[int, np.ndarray] = {}
        if c.control_source == "world":
            self.pairs = world_data(teacher["vae"], c.num_pairs, c.seed, c.control_type)
        else:
            self.load_pairs(accelerator)
        if c.stage == "kd":
            return self.setup_kd(teacher)
        return self.setup_ssd(teacher)

    def setup_kd(self, teacher):
        c = self.config
        block_map = c.block_map or {t: s for t, s in default_block_map(teacher["unet"], self.student_unet).items()
                                    if t.startswith("up_blocks")}  # decoder only
        self.block_map = {f"unet.{t}": f"unet.{s}" for t, s in block_map.items()}
        self.teacher_c = Controlled(teacher["unet"], self.teacher_cn, c.conditioning_scale)
        self.kd = KDLoss(self.teacher_c, self.student, self.block_map, c.lambda_f)
        return [Phase("controlnet", self.nets["controlnet"], self.kd_loss)]

    def setup_ssd(self, teacher):
        c = self.config
        from trainers.core.components import load_components

        offline = teacher["unet"] if not c.offline_dm else load_components(c.offline_dm, self.device)["unet"]
        offline.eval().requires_grad_(False)
        online = copy.deepcopy(offline).requires_grad_(True)  # before any hooks go on the offline DM
        self.nets["online_dm"] = online
        # the teacher's ControlNet sits in both DMs, frozen
        self.offline_c = Controlled(offline, self.teacher_cn, c.conditioning_scale)
        self.online_c = Controlled(NetProxy(self, "online_dm"), self.teacher_cn, c.conditioning_scale)
        steps = c.anneal_steps or c.max_steps
        self.alpha = Anneal(c.alpha_start, c.alpha_end, steps, c.anneal)
        self.lambda_fm = Anneal(c.lambda_fm_start, c.lambda_fm_end, steps, c.anneal)
        self.fm = SSIMFeatureLoss(UNetEncoder(teacher["unet"], c.fm_timestep), c.fm_weights)
        self.score = ScoreDistillationLoss(self.offline_c, self.online_c, self.schedule, c.real_guidance, c.t_min)
        return [Phase("online_dm", online, self.online_loss, lr=c.online_lr or None),
                Phase("controlnet", self.nets["controlnet"], self.student_loss, every=c.student_every)]

    # ---- data: (noise, target, control) triplets ---------------------------------------------------------
    @torch.no_grad()
    def control_maps(self, index) -> list[np.ndarray]:
        """``[H, W, 3] uint8`` control maps of pairs ``index``: ground truth (world) or extracted from
        the teacher's decoded sample by the live loop's ``sdxs_core.control.extract``."""
        from sdxs_core.control import extract

        if self.config.control_source == "world":
            return [self.pairs["maps"][i] for i in index]
        cache = self.extracted  # a pair's map never changes: extract it once
        todo = sorted({i for i in index if i not in cache})
        if todo:
            images = to_pil(self.control_engine.decode(self.pairs["latents"][todo].to(self.device)))
            cache.update({i: extract(self.config.control_type, im, size=self.resolution).image for i, im in zip(todo, images)})
        return [cache[i] for i in index]

    def controls(self, index) -> torch.Tensor:
        """``[N, 3, H, W]`` ControlNet input, through the engine's own ``prepare_control``."""
        maps = self.control_maps(index)
        return self.control_engine.prepare_control(maps, len(maps), self.resolution, self.resolution).float()

    def batch(self, step, micro, accelerator):
        batch = super().batch(step, micro, accelerator)
        batch["control"] = self.controls(batch["index"].tolist())
        batch["student_noise"] = self.fresh_noise(batch["noise"], batch["generator"])
        return batch

    def fresh_noise(self, noise, generator):
        """``round(ratio * N)`` of the student's inputs (random ones) replaced by freshly drawn noise."""
        k = round(self.config.fresh_noise_ratio * noise.shape[0])
        if not k:
            return noise
        which = torch.randperm(noise.shape[0], generator=generator, device=noise.device)[:k]
        noise = noise.clone()
        noise[which] = torch.randn(noise[which].shape, generator=generator, device=noise.device, dtype=noise.dtype)
        return noise

    # ---- losses ----------------------------------------------------------------------------------------
    def kd_loss(self, batch, step):
        x0 = batch["latents"].float()
        t = self.schedule.sample_t(x0.shape[0], 0.0, 1.0, batch["generator"], x0.device)
        noise = torch.randn(x0.shape, generator=batch["generator"], device=x0.device)
        self.teacher_c.use(batch["control"]), self.student.use(batch["control"])
        return self.kd(self.schedule.add_noise(x0, noise, t), t, batch["embeds"])

    def student_sample(self, batch):
        for net in (self.student, self.offline_c, self.online_c):
            net.use(batch["control"])
        return one_step(self.student, batch["student_noise"], batch["embeds"], self.schedule)

    def online_loss(self, batch, step):
        with torch.no_grad():
            x0 = self.student_sample(batch)
        return DenoisingLoss(self.online_c, self.schedule)(x0, batch["embeds"], batch["generator"])

    def scalars(self, step):
        return super().scalars(step) if self.config.stage == "ssd" else {}

    # ---- validation and export -------------------------------------------------------------------------
    def sample_unet(self):
        return self.student_unet

    @torch.no_grad()
    def validation_images(self):
        """The student U-Net + ControlNet on the first pairs' prompts and control maps (fixed seeds)."""
        c = self.config
        k = min(len(c.val_prompts), len(self.pairs["prompts"]))
        cn = unwrap(self.nets["controlnet"])
        with borrowed(self.student_unet, cn):
            engine = self.engine(self.student_unet)
            engine.set_controlnet(cn)
            return engine.generate([self.pairs["prompts"][i] for i in range(k)], seed=c.val_seed,
                                   control_image=self.control_maps(range(k)), control_scale=c.conditioning_scale,
                                   num_inference_steps=c.val_steps, height=self.resolution, width=self.resolution,
                                   output_type="np").images

    def export(self, out, nets, info):
        """The folder's ``train_info.json`` names where the run started (``init``: its steps count from
        there) and, for SSD, its fresh-noise share, so a shipped ControlNet says how it was made."""
        c = self.config
        recipe = {"init": c.controlnet or None}
        if c.stage == "ssd":
            recipe["fresh_noise_ratio"] = c.fresh_noise_ratio
        return save_controlnet(nets["controlnet"], out, {**info, "stage": c.stage, "teacher": c.teacher,
                                                         "teacher_controlnet": c.teacher_controlnet, "student": c.student,
                                                         "control_type": c.control_type, "control_source": c.control_source,
                                                         **recipe})


if __name__ == "__main__":
    main(ControlNetSSD, doc=__doc__)
