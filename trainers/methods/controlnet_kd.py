"""ControlNet distillation for the one-step, mid-block-less student U-Net (paper section 3.1, Fig. 2b):
stage 1 of 2, continued by ``controlnet_ssd``.

Frozen:  the teacher U-Net + the teacher's pretrained ControlNet; the student U-Net; the text encoder.
Trained: the student ControlNet (``sdxs_core.architectures.build_controlnet``: encoder copied from
         the student U-Net, zero convs at zero), or ``controlnet`` to continue one.
Loss:    the ControlNets are combined with their U-Nets and both pairs see the same noisy x_t and
         the same control image: output MSE + lambda_F * feature MSE on the U-Net *decoder* only
         (a ControlNet does not change the encoder's features).
Control images (``control_source``): ``extract`` (see ``trainers.methods.controlnets``) or, in the
         miniature world, ``world``: x0 = the teacher VAE's latents of world renders, control = their
         ground-truth maps (``trainers.miniature.evaluate.control_maps``, ``control_type`` edges | depth).
Output:  a ``ControlNetModel`` folder (safetensors) for ``load_engine(student, controlnet=folder)``.

    python -m trainers.methods.controlnet_kd --config trainers/configs/controlnet_kd_miniature.yaml
"""

from dataclasses import dataclass

import torch

from trainers.core.loop import Phase
from trainers.core.losses import KDLoss
from trainers.core.method import PairConfig, main
from trainers.core.student import default_block_map
from trainers.methods.controlnets import Controlled, ControlNetOptions, ControlNetStudent, world_data

CONTROL_SOURCES = ("extract", "world")


@dataclass
class ControlNetKDConfig(PairConfig, ControlNetOptions):
    control_source: str = "extract"  # extract | world (see the module docstring)
    lambda_f: float = 1.0  # feature-KD weight
    block_map: dict = None  # teacher -> student U-Net decoder blocks; None = every shape-compatible up stage

    method = "controlnet_kd"

    def errors(self):
        e = super().errors() + self.controlnet_errors()
        if self.control_source not in CONTROL_SOURCES:
            e.append(f"control_source={self.control_source!r} must be one of {CONTROL_SOURCES}")
        return e


class ControlNetKD(ControlNetStudent):
    config_cls = ControlNetKDConfig

    def setup(self, accelerator):
        c = self.config
        teacher = self.setup_controlnet(accelerator)
        block_map = c.block_map or {t: s for t, s in default_block_map(teacher["unet"], self.student_unet).items()
                                    if t.startswith("up_blocks")}  # decoder only
        self.block_map = {f"unet.{t}": f"unet.{s}" for t, s in block_map.items()}
        self.teacher_c = Controlled(teacher["unet"], self.teacher_cn, c.conditioning_scale)
        self.kd = KDLoss(self.teacher_c, self.student, self.block_map, c.lambda_f)
        return [Phase("controlnet", self.nets["controlnet"], self.kd_loss)]

    def load_training_pairs(self, accelerator):
        c = self.config
        if c.control_source == "world":
            self.pairs = world_data(self.teacher["vae"], c.num_pairs, c.seed, c.control_type)
        else:
            self.load_pairs(accelerator)

    def kd_loss(self, batch, step):
        x0 = batch["latents"].float()
        t = self.schedule.sample_t(x0.shape[0], 0.0, 1.0, batch["generator"], x0.device)
        noise = torch.randn(x0.shape, generator=batch["generator"], device=x0.device)
        self.teacher_c.use(batch["control"]), self.student.use(batch["control"])
        return self.kd(self.schedule.add_noise(x0, noise, t), t, batch["embeds"])

    def provenance(self):
        return {"stage": "kd", "control_source": self.config.control_source}


if __name__ == "__main__":
    main(ControlNetKD, doc=__doc__)
