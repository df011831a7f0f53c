"""Feature-matching warmup (paper section 3.2, Eq. 10).

Frozen:  the teacher (its ODE sampler made the noise -> image pairs, cached to safetensors and
         reused; its U-Net's down stages are the feature encoder), the text encoder.
Trained: the one-step student (block-removed, a copy of the teacher, or an earlier method's output).
Loss:    SSIM feature matching between the student's one-step sample and the teacher's ODE sample
         from the same noise: sum_l w_l (1 - SSIM(f_l(x_theta(eps)), f_l(psi(eps)))).

    python -m trainers.methods.fm_warmup --config trainers/configs/fm_warmup_miniature.yaml
"""

from dataclasses import dataclass

from trainers.core.loop import Phase
from trainers.core.losses import SSIMFeatureLoss, UNetEncoder
from trainers.core.method import Method, PairConfig, main, student_errors
from trainers.core.noise_schedule import one_step
from trainers.core.student import build_student


@dataclass
class FMConfig(PairConfig):
    student: str = "block_removed"  # copy | block_removed | a folder (e.g. the block_kd output)
    vae: str = ""  # optional AutoencoderTiny for the exported pipeline
    fm_timestep: int = 0  # the encoder sees clean latents at this timestep
    fm_weights: list[float] = None  # per layer (input first); None = uniform

    method = "fm_warmup"

    def errors(self):
        return super().errors() + student_errors(self.student)


class FMWarmup(Method):
    config_cls = FMConfig

    def setup(self, accelerator):
        teacher = self.load_teacher(accelerator)
        self.load_pairs(accelerator)
        student, self.student_info = build_student(self.config.student, teacher["unet"])
        self.nets = {"student": student.to(self.device)}
        self.fm = SSIMFeatureLoss(UNetEncoder(teacher["unet"], self.config.fm_timestep), self.config.fm_weights)
        return [Phase("student", self.nets["student"], self.loss)]

    def loss(self, batch, step):
        x0 = one_step(self.nets["student"], batch["noise"], batch["embeds"], self.schedule)
        return self.fm(x0, batch["latents"], batch["embeds"])


if __name__ == "__main__":
    main(FMWarmup, doc=__doc__)
