"""A style LoRA of the multi-step teacher, trained the usual way: what ``lora_ssd`` distils
(``style_lora``); the sd4 teacher's ships as ``assets/miniature/lora-pastel-teacher-sd4``.

Frozen:  the teacher U-Net's base weights, VAE and text encoder.
Trained: a PEFT LoRA on the teacher U-Net (B = 0 at start).
Data:    miniature-world renders in the ``pastel`` style (the VAE's latents) with their captions, or
         ``images``: a folder of the user's style images (``trainers.core.image_folder``), captioned by
         ``<name>.txt`` beside each image, else ``caption_template`` (``{trigger}``: the word that will
         call up the style).
Loss:    the plain diffusion loss (epsilon / v MSE), t over [0, T).
Output:  ``final/pytorch_lora_weights.safetensors`` (diffusers format) for the teacher's engine.

    python -m trainers.methods.lora_teacher --teacher assets/miniature/teacher --run-dir runs/miniature/lora_teacher
    python -m trainers.methods.lora_teacher --teacher T --set images=my_style/ --set trigger=mystyle
"""

import json
from dataclasses import dataclass, field

from trainers.core.config import TrainConfig
from trainers.core.image_folder import caption_options_of, folder_data, folder_info, option_errors
from trainers.core.loop import Phase
from trainers.core.losses import DenoisingLoss
from trainers.core.method import Method, main
from trainers.core.pipeline_folder import write_pipeline_atomically
from trainers.methods.controlnets import world_data
from trainers.methods.lora_ssd import _LoRAFile, add_student_lora, student_lora_state


@dataclass
class LoRATeacherConfig(TrainConfig):
    style: str = "pastel"  # world renders' style (images == "")
    num_images: int = 4096  # world renders, encoded once (images == "")
    images: str = ""  # a folder of style images (all of them, encoded once); "" = world renders in `style`
    trigger: str = ""  # images: the word the LoRA ties the style to, {trigger} in caption_template
    caption_template: str = "{trigger}"  # images without a <name>.txt caption; {caption}: caption_with=classifier
    caption_with: str = "template"  # template | classifier (the miniature world's scene caption as {caption})
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lora_blocks: list[str] = field(default_factory=list)  # module-name prefixes, as lora_ssd's; [] = the whole U-Net
    lr: float = 1e-4

    method = "lora_teacher"

    def errors(self):
        return super().errors() + option_errors(self)


class LoRATeacher(Method):
    config_cls = LoRATeacherConfig

    def setup(self, accelerator):
        c = self.config
        teacher = self.load_teacher(accelerator)
        if c.images:
            self.pairs = folder_data(teacher["vae"], c.images, self.resolution, **caption_options_of(c))
        else:
            self.pairs = world_data(teacher["vae"], c.num_images, c.seed, None, c.style)
        unet = add_student_lora(teacher["unet"], c.lora_rank, c.lora_alpha, c.lora_targets, blocks=c.lora_blocks)
        self.nets = {"student": unet}
        return [Phase("student", unet, self.loss)]

    def loss(self, batch, step):
        return DenoisingLoss(self.nets["student"], self.schedule)(batch["latents"], batch["embeds"], batch["generator"])

    def validation_images(self):
        return None  # a multi-step teacher: check it with the evaluator, not one-step samples

    def export(self, out, nets, info):
        c = self.config
        state = student_lora_state(nets["student"], c.lora_rank, c.lora_alpha)
        data = folder_info(c) if c.images else {"style": c.style}
        info = {**info, "teacher": c.teacher, **data, "num_images": len(self.pairs["prompts"]), "rank": c.lora_rank,
                "alpha_baked_into_B": c.lora_alpha, "lora_blocks": c.lora_blocks}
        return write_pipeline_atomically(_LoRAFile(state), out, {"train_info.json": json.dumps(info, indent=2)})


if __name__ == "__main__":
    main(LoRATeacher, doc=__doc__)
