"""Diffusion pieces every method shares: the noise schedule, the one-step generator, prompts, the
teacher's ODE pairs (cached to disk) and saving a student as a diffusers pipeline folder."""

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm


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


# ---- components and prompts ---------------------------------------------------------------------------
def load_components(path: str | os.PathLike, device) -> dict:
    """A pipeline folder's components in fp32 through ``sdxs_core`` (its offline-aware errors)."""
    from sdxs_core.loading import load_pipeline_components

    return load_pipeline_components(Path(path), torch.device(device), torch.float32)


def load_prompts(source: str, n: int, seed: int = 0) -> list[str]:
    if source == "miniature":
        from trainers.miniature.text import training_captions

        return training_captions(n, seed)
    lines = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    return lines[:n]


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0].float()  # [N, L, D]


# ---- the teacher's ODE pairs ------------------------------------------------------------------------
def pair_cache(path: str | os.PathLike, teacher_dir: str, prompts: list[str], n: int, steps: int, guidance: float,
               resolution: int, seed: int, device, batch: int = 16, lora: str = "", lora_scale: float = 1.0) -> dict:
    """Noise -> teacher-image latent pairs from the teacher's ODE sampler (through the engine),
    generated once and reused from a safetensors file. A file made with other settings is remade.
    ``lora``: sample the teacher with this LoRA loaded by the engine (LoRA-SSD's styled targets).

    Returns ``{"noise": [N,4,h,w], "latents": [N,4,h,w], "prompts": list[str]}`` on the CPU.
    """
    path = Path(path)
    spec = dict(teacher=str(Path(teacher_dir).resolve()), n=n, steps=steps, guidance=guidance,
                resolution=resolution, seed=seed, prompts=hashlib.sha1("\n".join(prompts).encode()).hexdigest())
    if lora:  # only then: caches made before this option existed stay valid
        spec.update(lora=str(Path(lora).resolve()), lora_scale=lora_scale)
    if path.is_file():
        pairs, found = read_pairs(path)
        if found == spec:
            return pairs

    from sdxs_core.engine import OneStepEngine

    engine = OneStepEngine(**load_components(teacher_dir, device))
    if lora:
        engine.load_lora(lora, scale=lora_scale)
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    g = torch.Generator("cpu").manual_seed(seed)
    noise_all, latents_all = [], []
    for i in tqdm(range(0, n, batch), desc=f"teacher pairs -> {path.name}", unit="batch", mininterval=10):
        p = chosen[i:i + batch]
        noise = engine.make_noise([0] * len(p), resolution, resolution,
                                  generators=[torch.Generator("cpu").manual_seed(int(torch.randint(2**62, (1,), generator=g)))
                                              for _ in p])
        out = engine.generate(p, seed=list(range(i, i + len(p))), noise=noise, num_inference_steps=steps,
                              guidance_scale=guidance, output_type="latent")  # seeds: a stochastic sampler's step noise
        noise_all.append(noise.float().cpu())
        latents_all.append(out.images.float().cpu())
    tensors = {"noise": torch.cat(noise_all).contiguous(), "latents": torch.cat(latents_all).contiguous()}
    _save_pairs(path, tensors, spec, chosen)
    return {**tensors, "prompts": chosen}


def read_pairs(path: str | os.PathLike) -> tuple[dict, dict]:
    """A pair cache as written by ``pair_cache``: (pairs, its spec)."""
    from safetensors.torch import load_file, safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(path)
    pairs = {"noise": tensors["noise"], "latents": tensors["latents"], "prompts": json.loads(meta.get("prompts", "[]"))}
    return pairs, json.loads(meta.get("spec", "{}"))


def _save_pairs(path: Path, tensors: dict, spec: dict, prompts: list[str]) -> None:
    """Atomically: a killed run leaves the old cache or none, never half a file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    save_file(tensors, tmp, metadata={"spec": json.dumps(spec), "prompts": json.dumps(prompts)})
    os.chmod(tmp, 0o644)  # mkstemp makes files private
    os.replace(tmp, path)


def restyled_pair_cache(path: str | os.PathLike, plain_path: str | os.PathLike, n: int, teacher_dir: str, lora: str,
                        lora_scale: float, strength: float, steps: int, guidance: float, device,
                        batch: int = 16) -> dict:
    """Styled pairs that keep the layout of plain ones: the first ``n`` pairs of the plain cache
    ``plain_path``, each teacher image re-noised to ``strength`` with the pair's own noise and
    denoised by the teacher with the style LoRA (SDEdit). The noise stays the pair's, so each target
    differs from the plain one in look, not in scene (the LoRA teacher's own ODE from that noise
    often lands on another layout). Cached like
    ``pair_cache``: remade when any setting, or the plain cache, changes.
    """
    plain, plain_spec = read_pairs(plain_path)
    if len(plain["prompts"]) < n:
        raise ValueError(f"{plain_path} holds {len(plain['prompts'])} plain pairs; restyling needs {n}")
    path = Path(path)
    spec = dict(plain=plain_spec, n=n, teacher=str(Path(teacher_dir).resolve()), lora=str(Path(lora).resolve()),
                lora_scale=lora_scale, strength=strength, steps=steps, guidance=guidance)
    if path.is_file():
        pairs, found = read_pairs(path)
        if found == spec:
            return pairs

    from sdxs_core.engine import OneStepEngine

    engine = OneStepEngine(**load_components(teacher_dir, device))
    engine.load_lora(lora, scale=lora_scale)
    prompts, noise_all = plain["prompts"][:n], plain["noise"][:n]
    side = noise_all.shape[-1] * engine.vae_scale_factor
    latents = []
    for i in tqdm(range(0, n, batch), desc=f"restyled pairs -> {path.name}", unit="batch", mininterval=10):
        p = prompts[i:i + batch]  # seeds: the step noise of a stochastic sampler, pair i's own
        out = engine.generate(p, seed=list(range(i, i + len(p))), noise=noise_all[i:i + batch],
                              init_latents=plain["latents"][i:i + batch], strength=strength,
                              num_inference_steps=steps, guidance_scale=guidance,
                              height=side, width=side, output_type="latent")
        latents.append(out.images.float().cpu())
    tensors = {"noise": noise_all.contiguous(), "latents": torch.cat(latents).contiguous()}
    _save_pairs(path, tensors, spec, prompts)
    return {**tensors, "prompts": prompts}


def one_step_scheduler(scheduler):
    """The teacher's noise schedule with trailing spacing: one step lands on t = T-1."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, timestep_spacing="trailing", clip_sample=False)


# ---- saving -------------------------------------------------------------------------------------------
def vae_dir(folder: str | os.PathLike) -> Path:
    """A codec's own folder: a pipeline folder's ``vae``, else ``folder`` itself."""
    folder = Path(folder)
    return folder / "vae" if (folder / "vae").is_dir() else folder


def load_vae(folder: str | os.PathLike):
    """The image codec of a pipeline folder (its ``vae``) or a codec's own folder, of the class its
    config names: an AutoencoderTiny (what the decoder method exports) or an AutoencoderKL (a teacher's)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    folder = vae_dir(folder)
    classes = {"AutoencoderTiny": AutoencoderTiny, "AutoencoderKL": AutoencoderKL}
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in classes:
        raise ValueError(f"{folder} holds a {name}, not one of {sorted(classes)}")
    return classes[name].from_pretrained(folder)


def link_shared_parts(folder: Path, peers: list[Path]) -> list[str]:
    """Replace each component folder of ``folder`` whose files equal those of the same-named component
    of one of the ``peers`` pipeline folders (a real folder, not a link) by a relative link to it:
    shipped models that share a text encoder or VAE store it once. Equal: byte for byte, JSON files
    up to ``VOLATILE_KEYS``."""
    def files(d: Path) -> dict:
        return {p.relative_to(d): p for p in d.rglob("*") if p.is_file()}

    linked = []
    for part in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        mine = files(part)
        for other in (Path(peer) / part.name for peer in peers):
            if other.is_symlink() or not other.is_dir():
                continue
            theirs = files(other)
            if mine.keys() == theirs.keys() and all(_same_file(mine[k], theirs[k]) for k in mine):
                shutil.rmtree(part)
                target = os.path.relpath(other.resolve(), folder.resolve())
                part.symlink_to(target, target_is_directory=True)
                linked.append(f"{part.name} -> {target}")
                break
    return linked


def save_pipeline_folder(out: str | os.PathLike, components: dict, unet=None, vae=None, one_step: bool = True,
                         extra: dict | None = None) -> Path:
    """Write a StableDiffusionPipeline folder atomically (temp folder + rename). A one-step student
    gets the teacher's noise schedule with trailing spacing, so one step lands on t = T-1."""
    from diffusers import StableDiffusionPipeline

    scheduler = one_step_scheduler(components["scheduler"]) if one_step else components["scheduler"]
    pipe = StableDiffusionPipeline(vae=vae or components["vae"], text_encoder=components["text_encoder"],
                                   tokenizer=components["tokenizer"], unet=unet or components["unet"],
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return write_pipeline_atomically(pipe, out, {"train_info.json": json.dumps(extra, indent=2)} if extra else None)


def detach_links_into(folder: Path) -> list[str]:
    """Before ``folder`` is replaced: every sibling's link into it becomes a real copy of what it
    pointed at (copied in full first), so no other model changes with it."""
    folder, detached = Path(folder).resolve(), []
    for sibling in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p.resolve() != folder):
        for link in sorted(p for p in sibling.iterdir() if p.is_symlink()):
            target = link.resolve()
            if target.is_dir() and folder in target.parents:
                tmp = link.with_name(f".{link.name}-copy")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(target, tmp)
                link.unlink()  # a directory cannot be renamed over a link: unlink, then move the full copy in
                os.replace(tmp, link)
                detached.append(str(link))
    return detached


# JSON keys that record where a part was loaded from or a tokenizer's runtime padding, not the model
VOLATILE_KEYS = ("_name_or_path", "padding", "truncation")


def _same_file(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        try:
            da, db = json.loads(a.read_text()), json.loads(b.read_text())
        except ValueError:
            return False
        if isinstance(da, dict) and isinstance(db, dict):
            return {k: v for k, v in da.items() if k not in VOLATILE_KEYS} == \
                {k: v for k, v in db.items() if k not in VOLATILE_KEYS}
        return da == db
    return filecmp.cmp(a, b, shallow=False)


def write_pipeline_atomically(pipe, out: str | os.PathLike, files: dict[str, str] | None = None,
                              link_to: list[Path] = ()) -> Path:
    """Save a pipeline (plus small text files) to a temp folder, then swap it in: a killed run
    never leaves half a model, and the previous version is removed only once the new one is in place.
    ``link_to``: pipeline folders next to ``out`` whose identical components become links (``link_shared_parts``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for path in (tmp, *tmp.rglob("*")):  # mkdtemp (and some writers) make them private; models are meant to be shared
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    link_shared_parts(tmp, [Path(p) for p in link_to if Path(p).resolve() != out.resolve()])
    old = out.with_name(f".{out.name}-old")
    if out.exists():
        detach_links_into(out)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
