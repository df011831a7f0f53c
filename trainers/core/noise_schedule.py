"""The teacher's noise schedule and the student's single step: what every method computes with."""

import torch


class NoiseSchedule:
    """The teacher's training schedule (DDPM alphas), for adding noise and reading x0 back."""

    def __init__(self, scheduler_config, device="cpu"):
        from diffusers import DDPMScheduler

        self.ddpm = DDPMScheduler.from_config(scheduler_config)
        self.num_timesteps = self.ddpm.config.num_train_timesteps
        self.prediction_type = self.ddpm.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported (epsilon or v_prediction)")
        self.alphas_cumprod = self.ddpm.alphas_cumprod.to(device, torch.float32)

    def _a(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].view(-1, 1, 1, 1)  # [N, 1, 1, 1]

    def add_noise(self, x0, noise, t):
        a = self._a(t)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def pred_x0(self, model_out, xt, t):
        a = self._a(t)
        if self.prediction_type == "epsilon":
            return (xt - (1 - a).sqrt() * model_out) / a.sqrt()
        return a.sqrt() * xt - (1 - a).sqrt() * model_out

    def target(self, x0, noise, t):
        """What the network is trained to output (epsilon or v)."""
        if self.prediction_type == "epsilon":
            return noise
        a = self._a(t)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def kd_weight(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """Per-sample weights [N] for an epsilon-space output loss. ``eps``: all ones. ``v``: 1 / alpha_bar_t,
        which turns an epsilon error into the v error (= eps error + x0 error, "SNR + 1" weighting),
        normalised to mean 1 over t uniform in [0, T). Plain epsilon MSE nearly ignores the high-noise steps
        where the sampler decides the layout: there a small epsilon error is a large x0 error."""
        if kind == "eps":
            return torch.ones(t.shape, device=t.device)
        if kind != "v":
            raise ValueError(f"kd weighting {kind!r} must be eps or v")
        inv = 1.0 / self.alphas_cumprod
        return inv[t] / inv.mean()

    def sample_t(self, n: int, lo: float, hi: float, generator=None, device="cpu") -> torch.Tensor:
        """Integer timesteps uniform in [lo*T, hi*T) (fractions of T)."""
        lo_i, hi_i = int(lo * self.num_timesteps), max(int(hi * self.num_timesteps), int(lo * self.num_timesteps) + 1)
        return torch.randint(lo_i, hi_i, (n,), generator=generator, device=device)


def one_step(unet, noise: torch.Tensor, embeds: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The student's single step at t = T-1, exactly what the engine computes for a saved student
    pipeline (trailing DDPM, one step): x0 = (z - sqrt(1-a) * eps) / sqrt(a)."""
    t = torch.full((noise.shape[0],), schedule.num_timesteps - 1, device=noise.device, dtype=torch.long)
    out = unet(noise, t, encoder_hidden_states=embeds, return_dict=False)[0]
    return schedule.pred_x0(out.float(), noise.float(), t)


def unet_forward(unet, xt, t, embeds):
    return unet(xt, t, encoder_hidden_states=embeds, return_dict=False)[0].float()


def one_step_scheduler(scheduler):
    """The teacher's noise schedule with trailing spacing: one step lands on t = T-1."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, timestep_spacing="trailing", clip_sample=False)
