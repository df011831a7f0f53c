"""Losses of the SDXS paper as small callables. Each returns ``(loss, logs)``: a scalar tensor to
backpropagate and a dict of floats to log, so methods compose them and the loop never looks inside.
"""

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- features through forward hooks -------------------------------------------------------------------
class _Stop(Exception):
    pass


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output[0] if hasattr(output, "__getitem__") else output.sample


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / FSDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


class FeatureHooks:
    """Records the outputs of named submodules during a forward pass. Names are those of
    ``named_modules()`` on the unwrapped model; hooks sit on the module objects, so they keep working
    when DDP/FSDP wraps the model and its names gain a ``module.`` prefix."""

    def __init__(self, model: nn.Module, names: list[str], stop_after: str | None = None):
        modules = dict(unwrap(model).named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise KeyError(f"no block named {missing} in {type(model).__name__}; e.g. {list(modules)[1:6]}")
        self.names, self.features, self.active = list(names), {}, False
        self.handles = [modules[n].register_forward_hook(self._hook(n, n == stop_after)) for n in names]

    def _hook(self, name, stop):
        def hook(module, inputs, output):
            if not self.active:  # the same network may also run for other purposes (e.g. real score)
                return
            self.features[name] = _first_tensor(output)
            if stop:
                raise _Stop  # the rest of the network is not needed: skip it
        return hook

    @contextmanager
    def recording(self):
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def collect(self) -> list[torch.Tensor]:
        feats = [self.features.pop(n) for n in self.names]
        self.features.clear()
        return feats

    def remove(self):
        for h in self.handles:
            h.remove()


class UNetEncoder(nn.Module):
    """The frozen teacher U-Net's down stages as a feature encoder (always available offline, unlike
    a VGG/DINO download). Latents in, one feature map per down stage out; mid and up stages are
    skipped by stopping the forward pass after the last hooked stage."""

    def __init__(self, unet, timestep: int = 0, layers: list[str] | None = None):
        super().__init__()
        self.unet, self.timestep = unet, timestep
        self.layers = layers or [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
        self.hooks = FeatureHooks(unet, self.layers, stop_after=self.layers[-1])

    def forward(self, latents, embeds) -> list[torch.Tensor]:
        t = torch.full((latents.shape[0],), self.timestep, device=latents.device, dtype=torch.long)
        with self.hooks.recording():
            try:
                self.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)
            except _Stop:
                pass
        return self.hooks.collect()


# ---- Eq. 10: SSIM feature matching ------------------------------------------------------------------------
def ssim_features(x: torch.Tensor, y: torch.Tensor, c1: float = 1e-6, c2: float = 1e-6) -> torch.Tensor:
    """DISTS-style SSIM of two feature maps ``[N, C, H, W]``: luminance (per-channel means) times
    structure (per-channel covariance), from global spatial statistics. Returns ``[N]`` in [-1, 1]."""
    x, y = x.float().flatten(2), y.float().flatten(2)  # [N, C, HW]
    mx, my = x.mean(-1), y.mean(-1)
    vx, vy = x.var(-1, unbiased=False), y.var(-1, unbiased=False)
    cov = ((x - mx[..., None]) * (y - my[..., None])).mean(-1)
    luminance = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    structure = (2 * cov + c2) / (vx + vy + c2)
    return (luminance * structure).mean(1)


class SSIMFeatureLoss(nn.Module):
    """Eq. 10: ``sum_l w_l (1 - SSIM(f_l(x), f_l(y)))`` on encoder features; 0 for identical inputs.
    Per-layer weights are normalised to sum to 1 (DISTS-like, here fixed rather than learned).
    ``include_input`` adds the latents themselves as layer 0, as DISTS does with the image."""

    def __init__(self, encoder: UNetEncoder, weights: list[float] | None = None, include_input: bool = True):
        super().__init__()
        self.encoder, self.include_input = encoder, include_input
        n = len(encoder.layers) + int(include_input)
        w = torch.tensor(weights if weights else [1.0] * n, dtype=torch.float32)
        if len(w) != n:
            raise ValueError(f"{len(w)} FM layer weights for {n} layers")
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def forward(self, pred, target, embeds):
        feats_p = self.encoder(pred, embeds)
        with torch.no_grad():
            feats_t = self.encoder(target, embeds)
        if self.include_input:
            feats_p, feats_t = [pred] + feats_p, [target] + feats_t
        per_layer = torch.stack([(1 - ssim_features(p, t)).mean() for p, t in zip(feats_p, feats_t)])
        loss = (self.weights.to(per_layer.device) * per_layer).sum()
        return loss, {"fm": loss.item()}


# ---- Eqs. 11-12: score distillation ----------------------------------------------------------------------
class ScoreDistillationLoss:
    """The student's score-difference gradient on t in [t_min*T, alpha*T] (Eq. 12).

    Gradient normalisation convention (DMD2's, which the paper does not fix): per sample,
    ``grad = (x0_fake - x0_real) / mean|x - x0_real|``, ``nan_to_num``, applied as
    ``0.5 * mse(x, stopgrad(x - grad))`` so d loss / d x = grad / numel. The fake score comes from
    the online DM, the real score from the offline DM (optionally with CFG, ``real_guidance``).
    """

    def __init__(self, offline_unet, online_unet, schedule, real_guidance: float = 1.0, t_min: float = 0.02):
        self.offline, self.online, self.schedule = offline_unet, online_unet, schedule
        self.real_guidance, self.t_min = real_guidance, t_min

    def __call__(self, x0, embeds, alpha: float, uncond=None, generator=None):
        if alpha <= self.t_min:  # the score segment is empty: Eq. 11 is all feature matching
            return x0.sum() * 0.0, {"sd": 0.0}
        from .noise_schedule import unet_forward

        with torch.no_grad():
            t = self.schedule.sample_t(x0.shape[0], self.t_min, alpha, generator, x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
            xt = self.schedule.add_noise(x0.detach().float(), noise, t)
            x0_fake = self.schedule.pred_x0(unet_forward(self.online, xt, t, embeds), xt, t)
            real = unet_forward(self.offline, xt, t, embeds)
            if self.real_guidance > 1.0 and uncond is not None:
                real_u = unet_forward(self.offline, xt, t, uncond.expand_as(embeds))
                real = real_u + self.real_guidance * (real - real_u)
            x0_real = self.schedule.pred_x0(real, xt, t)
            norm = (x0.detach().float() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
            grad = torch.nan_to_num((x0_fake - x0_real) / norm)
        loss = 0.5 * F.mse_loss(x0.float(), (x0.detach().float() - grad).detach())
        return loss, {"sd": loss.item(), "sd_grad_abs": grad.abs().mean().item(), "t_mean": t.float().mean().item()}


# ---- beyond the paper: a style that keeps the layout -------------------------------------------------------
def local_structure(x: torch.Tensor, y: torch.Tensor, window: int = 7, c: float = 4.5e-4) -> torch.Tensor:
    """SSIM's structure term of two grayscale images ``[N, 1, H, W]`` in [0, 1], box window, made sign-blind:
    ``(|cov| + c) / (std_x * std_y + c)`` per pixel, mean per image ``[N]``. A local change of brightness,
    contrast or sign (a style may draw a dark shape light) keeps it at 1; a moved or reshaped edge does not.
    Flat regions score 1, so only the scene's edges count."""
    pool = lambda t: F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)
    x, y = x.float(), y.float()
    mx, my = pool(x), pool(y)
    vx, vy = pool(x * x) - mx**2, pool(y * y) - my**2
    cov = pool(x * y) - mx * my
    std = vx.clamp_min(1e-12).sqrt() * vy.clamp_min(1e-12).sqrt()  # the clamp: sqrt'(0) is inf in flat regions
    return ((cov.abs() + c) / (std + c)).clamp(max=1).flatten(1).mean(1)  # <= 1 but for rounding (Cauchy-Schwarz)


class LayoutKeepingLoss:
    """``1 - local_structure`` between the decoded images of a styled sample and the same model's unstyled
    sample from the same noise and caption: a style LoRA may recolour the scene, not redraw it. The
    paper's LoRA-SSD has no such term; its targets (the LoRA teacher's ODE from the same noise) carry
    other layouts in about 30 % of the miniature world's scenes (see docs/notebook/)."""

    def __init__(self, vae, window: int = 7):
        self.vae, self.window = vae, window

    def gray(self, latents):
        image = self.vae.decode(latents.float() / self.vae.config.scaling_factor, return_dict=False)[0]
        rgb = (image.float() / 2 + 0.5).clamp(0, 1)
        return (rgb * rgb.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)

    def __call__(self, x0, reference):
        with torch.no_grad():
            ref = self.gray(reference)
        loss = (1 - local_structure(self.gray(x0), ref, self.window)).mean()
        return loss, {"layout": loss.item()}


class DenoisingLoss:
    """Algorithm 1's online-DM update: the plain diffusion loss (epsilon or v MSE) on detached
    student samples, timesteps over the whole [0, T)."""

    def __init__(self, unet, schedule):
        self.unet, self.schedule = unet, schedule

    def __call__(self, x0, embeds, generator=None):
        from .noise_schedule import unet_forward

        x0 = x0.detach().float()
        t = self.schedule.sample_t(x0.shape[0], 0.0, 1.0, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        xt = self.schedule.add_noise(x0, noise, t)
        loss = F.mse_loss(unet_forward(self.unet, xt, t, embeds), self.schedule.target(x0, noise, t))
        return loss, {"denoise": loss.item()}


# ---- Eqs. 6-8: block-removal knowledge distillation -------------------------------------------------------
class KDLoss:
    """``L_OKD + lambda_F * L_FKD``: output MSE plus feature MSE through hooks on an explicit
    ``teacher block -> student block`` map. No denoising loss (unlike BK-SDM). ``weight`` ([N], optional)
    weighs each sample's output term, e.g. by timestep (see ``NoiseSchedule.kd_weight``)."""

    def __init__(self, teacher, student, block_map: dict[str, str], lambda_f: float = 1.0):
        self.teacher, self.student, self.lambda_f = teacher, student, lambda_f
        self.block_map = dict(block_map)
        self.t_hooks = FeatureHooks(teacher, list(self.block_map))
        self.s_hooks = FeatureHooks(student, list(self.block_map.values()))

    def __call__(self, xt, t, embeds, weight=None):
        from .noise_schedule import unet_forward

        with torch.no_grad(), self.t_hooks.recording():
            t_out = unet_forward(self.teacher, xt, t, embeds)
        t_feats = self.t_hooks.collect()
        with self.s_hooks.recording():
            s_out = unet_forward(self.student, xt, t, embeds)
        s_feats = self.s_hooks.collect()
        if weight is None:
            okd = F.mse_loss(s_out, t_out)
        else:
            okd = ((s_out - t_out) ** 2).mean(dim=(1, 2, 3)).mul(weight).mean()
        fkd = xt.new_zeros(())
        for (tn, sn), f_t, f_s in zip(self.block_map.items(), t_feats, s_feats):
            if f_t.shape != f_s.shape:
                raise ValueError(f"feature KD pair {tn} -> {sn} has shapes {tuple(f_t.shape)} vs {tuple(f_s.shape)}")
            fkd = fkd + F.mse_loss(f_s.float(), f_t.float())
        loss = okd + self.lambda_f * fkd
        return loss, {"okd": okd.item(), "fkd": fkd.item()}


# ---- Eq. 5: decoder distillation --------------------------------------------------------------------------
def downsampled_l1(pred, target, factor: int = 8):
    """L1 on ``factor``x average-pooled images; the factor shrinks for small images (>= 4 px left)."""
    factor = max(1, min(factor, pred.shape[-1] // 4))
    return F.l1_loss(F.avg_pool2d(pred.float(), factor), F.avg_pool2d(target.float(), factor))


def gradient_l1(pred, target):
    """L1 between the images' horizontal and vertical pixel differences: an L1 on pixels barely charges
    for blurring a 1-px line (few pixels), this charges every pixel the line's contrast crosses."""
    p, t = pred.float(), target.float()
    return F.l1_loss(p.diff(dim=-1), t.diff(dim=-1)) + F.l1_loss(p.diff(dim=-2), t.diff(dim=-2))


class Discriminator(nn.Module):
    """A small conv PatchGAN discriminator: strided convs with LeakyReLU, no norm."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks, c_in = [], 3
        for i in range(layers):
            c_out = channels * 2**i
            blocks += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        blocks.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(d_real, d_fake):
    loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return loss, {"d_loss": loss.item()}


def hinge_g_loss(d_fake):
    return -d_fake.mean()
