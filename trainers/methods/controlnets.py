"""What the ControlNet methods share: a U-Net with a ControlNet in front called like a plain U-Net,
loading and saving ControlNets, world renders as training data, and the student-ControlNet base of
``controlnet_kd`` and ``controlnet_ssd`` (frozen student U-Net, the teacher's ControlNet, control maps
through the live loop's extractors, validation and export).

Control images of the student methods: ``extract`` (the default) runs
``sdxs_core.control.extract(control_type, image, size=resolution)`` on the teacher's decoded sample,
then the engine's ``prepare_control``: the very path of the live loop. For the miniature world,
``canny`` (the evaluator's thresholds) and ``depth`` (the miniature estimator, absolute normalisation)
give maps in the format of its ground truth. ``controlnet_kd`` can instead train on world renders and
their ground-truth maps (``control_source: world``).
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainers.core.image_folder import encode_latents
from trainers.core.losses import unwrap
from trainers.core.method import Method, borrowed, student_errors
from trainers.core.pipeline_folder import write_pipeline_atomically
from trainers.core.student import build_student


class Controlled(torch.nn.Module):
    """A U-Net with a ControlNet in front, called like a plain U-Net, so the core losses
    (``unet_forward``, ``one_step``, ``KDLoss``) run it unchanged. The batch's control image is set
    with ``use``; the U-Net's blocks stay hookable as ``unet.<name>``. A trained ControlNet is passed
    as ``method.prepared("controlnet")`` (the accelerate-prepared one, looked up per call)."""

    def __init__(self, unet, controlnet, conditioning_scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet
        self.conditioning_scale, self.control = conditioning_scale, None

    def use(self, control: torch.Tensor) -> "Controlled":
        self.control = control  # [N, 3, H, W] in [0, 1], as the engine's prepare_control gives
        return self

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=self.control.to(sample.dtype),
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)


def load_controlnet(path: str, device):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, dtype=torch.float32).to(device)


def save_controlnet(controlnet, out, info: dict) -> Path:
    return write_pipeline_atomically(copy.deepcopy(controlnet).float(), out, {"train_info.json": json.dumps(info, indent=2)})


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


@dataclass
class ControlNetOptions:
    """Options of both student-ControlNet methods; a config adds them beside its method's own."""

    student: str = "copy"  # the one-step student pipeline / U-Net folder (frozen); copy for tests
    teacher_controlnet: str = ""  # required: a ControlNetModel folder for the teacher's U-Net
    controlnet: str = ""  # the student ControlNet to continue (controlnet_ssd: the controlnet_kd output); "" = a new one
    control_type: str = "canny"  # an extractor of sdxs_core.control (world renders: edges | depth)
    conditioning_scale: float = 1.0
    val_steps: int = 1  # validation steps of the student U-Net (1 = one-step student)

    def controlnet_errors(self) -> list[str]:
        e = student_errors(self.student)
        if not self.teacher_controlnet:
            e.append("teacher_controlnet is required: a ControlNetModel folder for the teacher U-Net")
        elif not (Path(self.teacher_controlnet) / "config.json").is_file():
            e.append(f"teacher_controlnet={self.teacher_controlnet!r} is not a ControlNetModel folder (no config.json)")
        if self.controlnet and not (Path(self.controlnet) / "config.json").is_file():
            e.append(f"controlnet={self.controlnet!r} is not a ControlNetModel folder (no config.json)")
        if self.val_steps < 1:
            e.append(f"val_steps={self.val_steps} must be >= 1")
        return e


class ControlNetStudent(Method):
    """A ControlNet for the frozen one-step student U-Net, trained against the teacher U-Net and its
    ControlNet on (noise, target, control) triplets of the teacher's ODE pairs."""

    ema_target = "controlnet"

    def setup_controlnet(self, accelerator) -> dict:
        """Teacher, its ControlNet, the frozen student and the trained ControlNet (``self.nets``), then
        the training pairs; returns the teacher's components."""
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
        self.student = Controlled(self.student_unet, self.prepared("controlnet"), c.conditioning_scale)
        self.control_engine = self.engine(teacher["unet"])  # decode + prepare_control, as the live loop
        self.extracted: dict[int, np.ndarray] = {}
        self.load_training_pairs(accelerator)
        return teacher

    def load_training_pairs(self, accelerator) -> None:
        self.load_pairs(accelerator)

    # ---- data: (noise, target, control) triplets ---------------------------------------------------------
    @torch.no_grad()
    def control_maps(self, index) -> list[np.ndarray]:
        """``[H, W, 3] uint8`` control maps of pairs ``index``: their ground truth when the pairs carry
        ``maps`` (world renders), else extracted from the teacher's decoded sample by the live loop's
        ``sdxs_core.control.extract``."""
        from sdxs_core.control import extract

        if "maps" in self.pairs:
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
        return batch

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

    def provenance(self) -> dict:
        """What ``train_info.json`` records of this method's own recipe."""
        return {}

    def export(self, out, nets, info):
        """The folder's ``train_info.json`` names where the run started (``init``: its steps count from
        there) and the method's recipe, so a shipped ControlNet says how it was made."""
        c = self.config
        return save_controlnet(nets["controlnet"], out, {**info, "teacher": c.teacher,
                                                         "teacher_controlnet": c.teacher_controlnet, "student": c.student,
                                                         "control_type": c.control_type, "init": c.controlnet or None,
                                                         **self.provenance()})
