"""The teacher's ControlNet, trained the usual way (ControlNet, Zhang et al.): what ``controlnet_ssd``
needs as ``teacher_controlnet`` and the miniature world does not ship.

Frozen:  the teacher U-Net, VAE and text encoder.
Trained: a ControlNet whose encoder starts as a copy of the teacher U-Net's (zero convs at zero).
Data:    miniature-world renders (the VAE's latents) with their captions and control maps: ground truth
         for ``canny`` (= ``edges``) and ``depth`` (``trainers.miniature.evaluate.control_maps``, the maps
         the evaluator conditions on), the live loop's extractor on each render for ``sketch``; or
         ``images``: a folder of the user's images (``trainers.core.image_folder``), their maps made by
         the live loop's extractors (``sdxs_core.control.extract``), so the ControlNet learns the maps it
         will be given. Either way rendered / read and encoded once at start.
Loss:    the plain diffusion loss (epsilon / v MSE) of teacher U-Net + ControlNet, t over [0, T).

    python -m trainers.methods.controlnet_teacher --teacher assets/miniature/teacher --set control_type=depth
    python -m trainers.methods.controlnet_teacher --teacher T --set images=photos/ --set control_type=sketch
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainers.core.config import TrainConfig
from trainers.core.image_folder import CONTROL_KINDS, caption_options_of, folder_data, folder_info, option_errors
from trainers.core.loop import Phase
from trainers.core.losses import unwrap
from trainers.core.method import Method, borrowed, main
from trainers.methods.controlnets import Controlled, load_controlnet, save_controlnet, world_data


@dataclass
class ControlNetTeacherConfig(TrainConfig):
    control_type: str = "depth"  # canny | sketch | depth; edges = canny (the name older configs use)
    num_images: int = 4096  # world renders, encoded once (images == "")
    style: str = "plain"  # world renders' style (images == "")
    images: str = ""  # a folder of images (all of them, encoded once); "" = world renders
    trigger: str = ""  # images: {trigger} in caption_template
    caption_template: str = "{trigger}"  # images without a <name>.txt caption; {caption}: caption_with=classifier
    caption_with: str = "template"  # template | classifier (the miniature world's scene caption as {caption})
    controlnet: str = ""  # continue this ControlNetModel folder; "" = a new one from the teacher U-Net
    conditioning_scale: float = 1.0
    val_steps: int = 20
    val_guidance: float = 3.0
    lr: float = 1e-4

    method = "controlnet_teacher"

    def errors(self):
        e = super().errors()
        if self.control_type not in CONTROL_KINDS:
            e.append(f"control_type={self.control_type!r} must be canny, sketch or depth (edges = canny)")
        elif self.images and self.control_type == "depth":
            from sdxs_core.control import EXTRACTORS

            ready = EXTRACTORS["depth"].available()
            if not ready:
                e.append(f"control_type='depth' with images needs a depth model: {ready.reason}")
        if self.num_images < 1:
            e.append(f"num_images={self.num_images} must be >= 1")
        return e + option_errors(self)


class ControlNetTeacher(Method):
    config_cls = ControlNetTeacherConfig
    ema_target = "controlnet"

    def setup(self, accelerator):
        from sdxs_core.architectures import build_controlnet

        c = self.config
        teacher = self.load_teacher(accelerator)
        vae_factor = 2 ** (len(teacher["vae"].config.block_out_channels) - 1)
        if c.images:
            self.pairs = folder_data(teacher["vae"], c.images, self.resolution, c.control_type, **caption_options_of(c))
        else:
            self.pairs = self.world_pairs(teacher["vae"])
        cn = load_controlnet(c.controlnet, self.device) if c.controlnet else build_controlnet(teacher["unet"], vae_factor)
        self.nets = {"controlnet": cn.to(self.device).requires_grad_(True)}
        self.control_engine = self.engine(teacher["unet"])
        self.model = Controlled(teacher["unet"], self.prepared("controlnet"), c.conditioning_scale)
        return [Phase("controlnet", self.nets["controlnet"], self.loss)]

    def world_pairs(self, vae) -> dict:
        """World renders with ground-truth edges (canny) or depth; sketch has no ground truth, so the
        live loop's extractor draws it from each render."""
        from sdxs_core.control import extract
        from trainers.miniature import world

        c = self.config
        kind = CONTROL_KINDS[c.control_type]
        if kind != "sketch":
            return world_data(vae, c.num_images, c.seed, "edges" if kind == "canny" else kind, c.style)
        real = world.render_batch(c.seed, c.num_images, style=c.style)
        data = world_data(vae, c.num_images, c.seed, None, real=real)
        data["maps"] = np.stack([extract("sketch", im).image for im in real["images"]])
        return data

    def batch(self, step, micro, accelerator):
        batch = super().batch(step, micro, accelerator)
        maps = [self.pairs["maps"][i] for i in batch["index"].tolist()]
        batch["control"] = self.control_engine.prepare_control(maps, len(maps), self.resolution, self.resolution).float()
        return batch

    def loss(self, batch, step):
        from trainers.core.noise_schedule import unet_forward

        x0 = batch["latents"].float()
        t = self.schedule.sample_t(x0.shape[0], 0.0, 1.0, batch["generator"], x0.device)
        noise = torch.randn(x0.shape, generator=batch["generator"], device=x0.device)
        pred = unet_forward(self.model.use(batch["control"]), self.schedule.add_noise(x0, noise, t), t, batch["embeds"])
        loss = F.mse_loss(pred, self.schedule.target(x0, noise, t))
        return loss, {"denoise": loss.item()}

    @torch.no_grad()
    def validation_images(self):
        from sdxs_core.engine import OneStepEngine

        c, t = self.config, self.teacher
        k = min(len(c.val_prompts), len(self.pairs["prompts"]))
        cn = unwrap(self.nets["controlnet"])
        with borrowed(t["unet"], cn):
            engine = OneStepEngine(t["tokenizer"], t["text_encoder"], t["unet"], t["vae"], t["scheduler"], controlnet=cn)
            return engine.generate(self.pairs["prompts"][:k], seed=c.val_seed, control_image=list(self.pairs["maps"][:k]),
                                   num_inference_steps=c.val_steps, guidance_scale=c.val_guidance,
                                   height=self.resolution, width=self.resolution, output_type="np").images

    def export(self, out, nets, info):
        c = self.config
        n = len(self.pairs["prompts"])
        data = {"data": f"{n} images from {c.images}", **folder_info(c)} if c.images else {"data": f"{n} {c.style} world renders"}
        # the live loop's name (canny, not edges): what the app's control_type_of reads
        return save_controlnet(nets["controlnet"], out, {**info, "teacher": c.teacher,
                                                         "control_type": CONTROL_KINDS[c.control_type],
                                                         "num_images": n, **data})


if __name__ == "__main__":
    main(ControlNetTeacher, doc=__doc__)
