"""MSE regression baseline (the blurry contrast of the paper's Fig. 6).

Frozen:  the teacher (its cached ODE noise -> image pairs), the text encoder.
Trained: the one-step student.
Loss:    MSE between the student's one-step latent and the teacher's ODE latent from the same
         noise. With crossing trajectories this averages feasible outputs (Eq. 9): blur.

    python -m trainers.methods.mse_baseline --config trainers/configs/mse_baseline_miniature.yaml
"""

from dataclasses import dataclass

import torch.nn.functional as F

from trainers.core.loop import Phase
from trainers.core.method import Method, PairConfig, main, student_errors
from trainers.core.noise_schedule import one_step
from trainers.core.student import build_student


@dataclass
class MSEConfig(PairConfig):
    student: str = "block_removed"  # copy | block_removed | a folder
    vae: str = ""

    method = "mse_baseline"

    def errors(self):
        return super().errors() + student_errors(self.student)


class MSEBaseline(Method):
    config_cls = MSEConfig

    def setup(self, accelerator):
        teacher = self.load_teacher(accelerator)
        self.load_pairs(accelerator)
        student, self.student_info = build_student(self.config.student, teacher["unet"])
        self.nets = {"student": student.to(self.device)}
        return [Phase("student", self.nets["student"], self.loss)]

    def loss(self, batch, step):
        x0 = one_step(self.nets["student"], batch["noise"], batch["embeds"], self.schedule)
        loss = F.mse_loss(x0, batch["latents"].float())
        return loss, {"mse": loss.item()}


if __name__ == "__main__":
    main(MSEBaseline, doc=__doc__)
