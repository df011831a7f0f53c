"""Segmented Score Distillation (paper section 3.2, Algorithm 1, Fig. 3).

Frozen:  the offline DM (real score, and the feature-matching encoder's down stages), the text
         encoder, the teacher's ODE pairs (cached).
Trained: the one-step student, and the online DM (fake score; initialised from the offline DM).
Loss:    online DM: denoising loss on detached student samples (every step).
         student (every ``student_every`` steps): score difference on t in [0, alpha*T]
         (DMD2-normalised, see ``ScoreDistillationLoss``) + lambda_FM * SSIM feature matching
         against the teacher's ODE sample from the same noise, standing in for (alpha*T, T].
         alpha and lambda_FM are annealed from high to low.
Inputs:  the teacher pairs' noise and captions; ``fresh_ratio`` of each batch instead gets fresh noise
         and a caption drawn from all ``num_prompts`` (the pairs use the first ``num_pairs``). Those rows
         have no ODE target, so only the score term (and the online DM) sees them: the student learns
         from the teacher's score beyond the pairs, as DMD2 does, while FM keeps it anchored. When no
         row of a batch keeps a pair (``fresh_ratio`` 1) no pair is sampled or read at all.

    python -m trainers.methods.ssd --config trainers/configs/ssd_miniature.yaml
"""

import copy
from abc import abstractmethod
from dataclasses import dataclass

from trainers.core.components import load_components
from trainers.core.loop import Phase
from trainers.core.losses import DenoisingLoss, ScoreDistillationLoss, SSIMFeatureLoss, UNetEncoder
from trainers.core.method import Method, PairConfig, main, student_errors
from trainers.core.noise_schedule import one_step
from trainers.core.schedules import Anneal
from trainers.core.student import build_student


@dataclass
class ScoreDistillationConfig(PairConfig):
    """Options of the score-distillation half every SSD method shares (``ssd``, ``lora_ssd``, ``controlnet_ssd``)."""

    offline_dm: str = ""  # pipeline folder of the real-score model; "" = the teacher
    alpha_start: float = 0.9
    alpha_end: float = 0.5
    lambda_fm_start: float = 10.0
    lambda_fm_end: float = 1.0
    anneal_steps: int = 0  # 0 = max_steps
    anneal: str = "linear"  # linear | cosine | constant
    student_every: int = 1  # alternating updates: the online DM every step, the trained network every N
    online_lr: float = 0.0  # 0 = lr
    real_guidance: float = 1.0  # CFG of the real score (1 = none)
    t_min: float = 0.02
    fm_timestep: int = 0
    fm_weights: list[float] = None  # per layer (input first); None = uniform

    def errors(self):
        e = super().errors()
        for name in ("alpha_start", "alpha_end", "t_min"):
            if not 0 <= getattr(self, name) <= 1:
                e.append(f"{name}={getattr(self, name)} must be in [0, 1]")
        if min(self.lambda_fm_start, self.lambda_fm_end) < 0 or self.student_every < 1:
            e.append("lambda_fm_* must be >= 0 and student_every >= 1")
        return e


@dataclass
class StudentSSDConfig(ScoreDistillationConfig):
    """SSD of the student itself (its weights, or a LoRA on it), with fresh inputs beside the pairs."""

    student: str = "copy"  # copy | block_removed | a folder (e.g. the fm_warmup output)
    fresh_ratio: float = 0.0  # share of the student's inputs with fresh noise and caption (score term only)

    def errors(self):
        e = super().errors() + student_errors(self.student)
        if not 0 <= self.fresh_ratio <= 1:
            e.append(f"fresh_ratio={self.fresh_ratio} must be in [0, 1]")
        return e


@dataclass
class SSDConfig(StudentSSDConfig):
    vae: str = ""  # the exported pipeline's codec: a decoder-method output, or a pipeline folder's VAE; "" = the teacher's

    method = "ssd"


class ScoreDistillation(Method):
    """The shared half of the SSD family: the frozen offline DM (real score), the online DM (fake score)
    trained on the student's detached samples, alpha and lambda_FM annealed, and Eq. 11's loss. A method
    builds its networks, then hands them to ``score_distillation``; it writes ``student_sample``."""

    def offline_dm(self):
        """The frozen real-score U-Net: ``offline_dm``'s, else the teacher's."""
        c = self.config
        offline = self.teacher["unet"] if not c.offline_dm else load_components(c.offline_dm, self.device)["unet"]
        return offline.eval().requires_grad_(False)

    def score_distillation(self, online, trained: str, real, fake, fm_scale: float = 1.0) -> list[Phase]:
        """Anneals, FM and score losses for the network ``self.nets[trained]``; ``online`` is the online
        DM (a copy made before any hook goes on the teacher), ``real`` / ``fake`` what the losses call as
        the offline / online DM. Algorithm 1's order: the online DM learns the current student, then the
        trained network moves."""
        c = self.config
        self.nets["online_dm"] = online
        steps = c.anneal_steps or c.max_steps
        self.alpha = Anneal(c.alpha_start, c.alpha_end, steps, c.anneal)
        self.lambda_fm = Anneal(c.lambda_fm_start * fm_scale, c.lambda_fm_end * fm_scale, steps, c.anneal)
        self.fm = SSIMFeatureLoss(UNetEncoder(self.teacher["unet"], c.fm_timestep), c.fm_weights)
        self.fake = fake
        self.score = ScoreDistillationLoss(real, fake, self.schedule, c.real_guidance, c.t_min)
        return [Phase("online_dm", online, self.online_loss, lr=c.online_lr or None),
                Phase(trained, self.nets[trained], self.student_loss, every=c.student_every)]

    @abstractmethod
    def student_sample(self, batch):
        """The trained network's one-step samples (x0 latents) for ``batch``."""

    def online_loss(self, batch, step):
        import torch

        with torch.no_grad():
            x0 = self.student_sample(batch)
        return DenoisingLoss(self.fake, self.schedule)(x0, batch["embeds"], batch["generator"])

    def student_loss(self, batch, step):
        return self.distillation_loss(self.student_sample(batch), batch, step)

    def distillation_loss(self, x0, batch, step):
        """Eq. 11 for the student's samples ``x0``: score difference + lambda_FM * feature matching on
        the first ``batch["paired"]`` rows (those with an ODE target)."""
        at = self.anneal_position(step)
        sd, sd_logs = self.score(x0, batch["embeds"], self.alpha(at), self.uncond, batch["generator"])
        p = batch["paired"]
        fm, fm_logs = self.fm(x0[:p], batch["latents"][:p], batch["embeds"][:p]) if p else (0.0, {"fm": 0.0})
        return sd + self.lambda_fm(at) * fm, {**sd_logs, **fm_logs}

    def scalars(self, step):
        at = self.anneal_position(step)
        return {"alpha": round(self.alpha(at), 5), "lambda_fm": round(self.lambda_fm(at), 5)}


class SSD(ScoreDistillation):
    config_cls = SSDConfig

    def setup(self, accelerator):
        c = self.config
        teacher = self.load_teacher(accelerator)
        if self.pairs_needed():
            self.load_pairs(accelerator)
        offline = self.offline_dm()
        student, self.student_info = build_student(c.student, teacher["unet"])
        online = copy.deepcopy(offline).requires_grad_(True)  # before any hooks go on the offline DM
        self.nets = {"student": student.to(self.device)}
        return self.score_distillation(online, "student", real=offline, fake=self.prepared("online_dm"))

    def fresh_rows(self) -> int:
        """Rows of each batch that get fresh noise and captions instead of a pair."""
        return round(self.config.fresh_ratio * self.config.batch_size)

    def pairs_needed(self) -> bool:
        """False when every row is fresh: the teacher's ODE pairs would be sampled only to be replaced."""
        return self.fresh_rows() < self.config.batch_size

    def batch(self, step, micro, accelerator):
        """The pairs' batch, its last ``fresh_rows()`` rows given fresh noise and captions;
        ``batch["paired"]`` counts the rows that keep their ODE target."""
        import torch

        n, k = self.config.batch_size, self.fresh_rows()
        if k == n:
            gen = torch.Generator(self.device).manual_seed(self.step_seed(step, micro, accelerator))
            noise, embeds = self.fresh_inputs(n, gen)
            return {"noise": noise, "embeds": embeds, "generator": gen, "paired": 0}
        batch = super().batch(step, micro, accelerator)
        batch["paired"] = n - k
        if k:
            noise, embeds = self.fresh_inputs(k, batch["generator"])
            batch["noise"] = torch.cat([batch["noise"][:n - k], noise])
            batch["embeds"] = torch.cat([batch["embeds"][:n - k], embeds])
        return batch

    def fresh_inputs(self, k: int, gen):
        """``k`` fresh noise inputs and the embeddings of ``k`` captions drawn from all prompts."""
        import torch

        from trainers.core.prompts import encode_prompts

        pick = torch.randint(len(self.prompts), (k,), generator=gen, device=gen.device).tolist()
        noise = torch.randn((k, *self.latent_shape), generator=gen, device=gen.device)
        return noise, encode_prompts(self.teacher["tokenizer"], self.teacher["text_encoder"],
                                     [self.prompts[i] for i in pick], self.device)

    def student_sample(self, batch):
        return one_step(self.nets["student"], batch["noise"], batch["embeds"], self.schedule)


if __name__ == "__main__":
    main(SSD, doc=__doc__)
