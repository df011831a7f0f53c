"""Block-removal knowledge distillation of the U-Net (paper section 3.1, Eqs. 6-8, Fig. 2b).

Frozen:  the teacher U-Net (with its mid stage), the text encoder. x0: the teacher's ODE samples
         (no dataset needed), or for the miniature world its renders through the VAE (``x0_source:
         world``: unlimited images and captions, as BK-SDM distils on real image-text pairs).
Trained: the block-removed student U-Net (mid stage, last down / first up stage and the
         highest-resolution transformers removed), initialised from the teacher by an explicit name map.
Loss:    L_OKD + lambda_F * L_FKD: output MSE + feature MSE on an explicit teacher -> student block
         map, at noisy x_t over t in [0, T). No denoising loss (unlike BK-SDM). ``kd_weighting: v``
         weighs the output term by 1 / alpha_bar_t so the high-noise steps (layout) count;
         ``uncond_prob`` of the batch is distilled on the empty prompt, the teacher's unconditional
         branch, which CFG sampling of the student needs and the captions alone never teach.
The result is still a multi-step model (saved with the teacher's scheduler); ``fm_warmup`` and
``ssd`` then make it one-step.

    python -m trainers.methods.block_kd --config trainers/configs/block_kd_miniature.yaml
"""

from dataclasses import dataclass

import torch

from trainers.core.loop import Phase
from trainers.core.losses import KDLoss, unwrap
from trainers.core.method import Method, PairConfig, borrowed, main
from trainers.core.pipeline_folder import save_pipeline_folder
from trainers.core.student import block_removed_config, default_block_map, init_from_teacher


@dataclass
class KDConfig(PairConfig):
    layers_per_block: int = 1  # SDXS-512 keeps one resnet (+ transformer) per down stage
    lambda_f: float = 1.0
    block_map: dict = None  # teacher block -> student block; None = every shape-compatible stage
    val_steps: int = 10
    kd_weighting: str = "eps"  # eps | v (see NoiseSchedule.kd_weight)
    uncond_prob: float = 0.1  # share of samples distilled with the empty prompt (the student's CFG branch)
    x0_source: str = "pairs"  # pairs (the teacher's ODE samples) | world (miniature renders, VAE-encoded)
    num_images: int = 16384  # world: rendered images

    method = "block_kd"

    def errors(self):
        e = super().errors()
        if self.x0_source not in ("pairs", "world"):
            e.append(f"x0_source={self.x0_source!r} must be pairs or world")
        if self.kd_weighting not in ("eps", "v"):
            e.append(f"kd_weighting={self.kd_weighting!r} must be eps or v")
        if not 0.0 <= self.uncond_prob <= 1.0:
            e.append(f"uncond_prob={self.uncond_prob} must be in [0, 1]")
        if self.num_images < 1:
            e.append(f"num_images={self.num_images} must be >= 1")
        return e


class BlockKD(Method):
    config_cls = KDConfig

    def setup(self, accelerator):
        from diffusers import UNet2DConditionModel

        teacher = self.load_teacher(accelerator)
        if self.config.x0_source == "world":
            from trainers.methods.controlnets import world_data

            self.pairs = world_data(teacher["vae"], self.config.num_images, self.config.seed, None)
        else:
            self.load_pairs(accelerator)
        student = UNet2DConditionModel.from_config(block_removed_config(teacher["unet"].config, self.config.layers_per_block))
        self.name_map, self.not_copied = init_from_teacher(student, teacher["unet"])
        self.nets = {"student": student.to(self.device)}
        self.block_map = self.config.block_map or default_block_map(teacher["unet"], student)
        self.kd = KDLoss(teacher["unet"], self.prepared("student"), self.block_map, self.config.lambda_f)  # hooks on the plain student
        return [Phase("student", self.nets["student"], self.loss)]

    def loss(self, batch, step):
        x0 = batch["latents"].float()
        t = self.schedule.sample_t(x0.shape[0], 0.0, 1.0, batch["generator"], x0.device)
        noise = torch.randn(x0.shape, generator=batch["generator"], device=x0.device)
        drop = torch.rand(x0.shape[0], generator=batch["generator"], device=x0.device) < self.config.uncond_prob
        embeds = torch.where(drop.view(-1, 1, 1), self.uncond.expand_as(batch["embeds"]), batch["embeds"])
        weight = self.schedule.kd_weight(t, self.config.kd_weighting)
        return self.kd(self.schedule.add_noise(x0, noise, t), t, embeds, weight)

    @torch.no_grad()
    def validation_images(self):
        from sdxs_core.engine import OneStepEngine

        t, unet = self.teacher, unwrap(self.nets["student"])
        with borrowed(unet):
            engine = OneStepEngine(t["tokenizer"], t["text_encoder"], unet, t["vae"], t["scheduler"])
            return engine.generate(self.config.val_prompts, seed=self.config.val_seed, height=self.resolution,
                                   width=self.resolution, num_inference_steps=self.config.val_steps,
                                   guidance_scale=self.config.teacher_guidance, output_type="np").images

    def export(self, out, nets, info):
        return save_pipeline_folder(out, self.teacher, unet=nets["student"], one_step=False,
                                    extra={**info, "block_map": self.block_map, "not_copied": self.not_copied})


if __name__ == "__main__":
    main(BlockKD, doc=__doc__)
