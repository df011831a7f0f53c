"""ControlNet-SSD for the one-step, mid-block-less student U-Net (paper section 3.2, "ControlNet",
Fig. 5): stage 2 of 2, from the ``controlnet_kd`` output.

Frozen:  the student U-Net; the teacher's ControlNet, inside both the offline and the online DM
         (a fixed feature extractor, like the text encoder); the offline U-Net.
Trained: the student ControlNet; the online U-Net (denoising loss on the student's samples).
Loss:    as ``ssd``. Noise, target and control form a triplet: the control image is extracted
         from the teacher's own ODE sample for that noise (not from dataset images; see
         ``trainers.methods.controlnets``). A share ``fresh_noise_ratio`` of the student's inputs gets
         fresh noise instead, so only the control image ties them to their target (the paper: this
         strengthens control). Fresh captions (``ssd``'s ``fresh_ratio``) are no option here: they
         would not match their pair's control image.
Output:  a ``ControlNetModel`` folder (safetensors) for ``load_engine(student, controlnet=folder)``.

    python -m trainers.methods.controlnet_ssd --config trainers/configs/controlnet_ssd_miniature.yaml
"""

import copy
from dataclasses import dataclass

import torch

from trainers.core.method import main
from trainers.core.noise_schedule import one_step
from trainers.methods.controlnets import Controlled, ControlNetOptions, ControlNetStudent
from trainers.methods.ssd import ScoreDistillation, ScoreDistillationConfig


@dataclass
class ControlNetSSDConfig(ScoreDistillationConfig, ControlNetOptions):
    fresh_noise_ratio: float = 0.0  # share of the student's inputs replaced by fresh noise

    method = "controlnet_ssd"

    def errors(self):
        e = super().errors() + self.controlnet_errors()
        if not 0 <= self.fresh_noise_ratio <= 1:
            e.append(f"fresh_noise_ratio={self.fresh_noise_ratio} must be in [0, 1]")
        return e


class ControlNetSSD(ControlNetStudent, ScoreDistillation):
    config_cls = ControlNetSSDConfig

    def setup(self, accelerator):
        c = self.config
        self.setup_controlnet(accelerator)
        offline = self.offline_dm()
        online = copy.deepcopy(offline).requires_grad_(True)  # before any hooks go on the offline DM
        # the teacher's ControlNet sits in both DMs, frozen
        self.offline_c = Controlled(offline, self.teacher_cn, c.conditioning_scale)
        self.online_c = Controlled(self.prepared("online_dm"), self.teacher_cn, c.conditioning_scale)
        return self.score_distillation(online, "controlnet", real=self.offline_c, fake=self.online_c)

    def batch(self, step, micro, accelerator):
        batch = super().batch(step, micro, accelerator)
        batch["paired"] = len(batch["noise"])  # every row keeps its ODE target
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

    def student_sample(self, batch):
        for net in (self.student, self.offline_c, self.online_c):
            net.use(batch["control"])
        return one_step(self.student, batch["student_noise"], batch["embeds"], self.schedule)

    def provenance(self):
        return {"stage": "ssd", "control_source": "extract", "fresh_noise_ratio": self.config.fresh_noise_ratio}


if __name__ == "__main__":
    main(ControlNetSSD, doc=__doc__)
