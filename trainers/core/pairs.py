"""The teacher's ODE pairs (noise -> teacher-image latent), sampled once through the engine and
cached in a safetensors file whose metadata records what made it: a file made with other settings is
remade, never silently reused."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sdxs_core.files import atomic_write

from .components import load_components


@dataclass(frozen=True)
class PairSpec:
    """What a pair cache holds: ``n`` pairs of the ``teacher``'s ODE sampler (``steps``, CFG ``guidance``)
    at ``resolution`` for ``prompts`` (cycled), noise drawn from ``seed``; with ``lora``, the teacher
    samples with that LoRA loaded by the engine at ``lora_scale`` (LoRA-SSD's styled targets)."""

    teacher: str
    prompts: tuple[str, ...]
    n: int
    steps: int
    guidance: float
    resolution: int
    seed: int
    lora: str = ""
    lora_scale: float = 1.0

    def record(self) -> dict:
        """The cache file's ``spec`` metadata: resolved paths and a hash of the prompts."""
        spec = dict(teacher=str(Path(self.teacher).resolve()), n=self.n, steps=self.steps, guidance=self.guidance,
                    resolution=self.resolution, seed=self.seed,
                    prompts=hashlib.sha1("\n".join(self.prompts).encode()).hexdigest())
        if self.lora:  # only then: caches made before this option existed stay valid
            spec.update(lora=str(Path(self.lora).resolve()), lora_scale=self.lora_scale)
        return spec


@dataclass(frozen=True)
class RestyleSpec:
    """Styled pairs that keep the layout of plain ones: the first ``n`` pairs of the ``plain`` cache,
    each teacher image re-noised to ``strength`` with the pair's own noise and denoised by the
    ``teacher`` with the style ``lora`` (SDEdit, ``steps``, CFG ``guidance``)."""

    plain: str
    n: int
    teacher: str
    lora: str
    lora_scale: float
    strength: float
    steps: int
    guidance: float

    def record(self, plain_record: dict) -> dict:
        return dict(plain=plain_record, n=self.n, teacher=str(Path(self.teacher).resolve()),
                    lora=str(Path(self.lora).resolve()), lora_scale=self.lora_scale, strength=self.strength,
                    steps=self.steps, guidance=self.guidance)


def pair_cache(path: str | os.PathLike, spec: PairSpec, device, batch: int = 16) -> dict:
    """The pairs ``spec`` describes, read from ``path`` or (missing, or made with other settings)
    sampled ``batch`` at a time through the engine and saved there.

    Returns ``{"noise": [N,4,h,w], "latents": [N,4,h,w], "prompts": list[str]}`` on the CPU.
    """
    path, record = Path(path), spec.record()
    if path.is_file():
        pairs, found = read_pairs(path)
        if found == record:
            return pairs

    from sdxs_core.engine import OneStepEngine

    engine = OneStepEngine(**load_components(spec.teacher, device))
    if spec.lora:
        engine.load_lora(spec.lora, scale=spec.lora_scale)
    chosen = [spec.prompts[i % len(spec.prompts)] for i in range(spec.n)]
    g = torch.Generator("cpu").manual_seed(spec.seed)
    noise_all, latents_all = [], []
    for i in tqdm(range(0, spec.n, batch), desc=f"teacher pairs -> {path.name}", unit="batch", mininterval=10):
        p = chosen[i:i + batch]
        noise = engine.make_noise([0] * len(p), spec.resolution, spec.resolution,
                                  generators=[torch.Generator("cpu").manual_seed(int(torch.randint(2**62, (1,), generator=g)))
                                              for _ in p])
        out = engine.generate(p, seed=list(range(i, i + len(p))), noise=noise, num_inference_steps=spec.steps,
                              guidance_scale=spec.guidance, output_type="latent")  # seeds: a stochastic sampler's step noise
        noise_all.append(noise.float().cpu())
        latents_all.append(out.images.float().cpu())
    tensors = {"noise": torch.cat(noise_all).contiguous(), "latents": torch.cat(latents_all).contiguous()}
    _save_pairs(path, tensors, record, chosen)
    return {**tensors, "prompts": chosen}


def restyled_pair_cache(path: str | os.PathLike, spec: RestyleSpec, device, batch: int = 16) -> dict:
    """The restyled pairs ``spec`` describes. The noise stays the pair's, so each target differs from
    the plain one in look, not in scene (the LoRA teacher's own ODE from that noise often lands on
    another layout). Cached like ``pair_cache``: remade when any setting, or the plain cache, changes."""
    plain, plain_record = read_pairs(spec.plain)
    if len(plain["prompts"]) < spec.n:
        raise ValueError(f"{spec.plain} holds {len(plain['prompts'])} plain pairs; restyling needs {spec.n}")
    path, record = Path(path), spec.record(plain_record)
    if path.is_file():
        pairs, found = read_pairs(path)
        if found == record:
            return pairs

    from sdxs_core.engine import OneStepEngine

    engine = OneStepEngine(**load_components(spec.teacher, device))
    engine.load_lora(spec.lora, scale=spec.lora_scale)
    n = spec.n
    prompts, noise_all = plain["prompts"][:n], plain["noise"][:n]
    side = noise_all.shape[-1] * engine.vae_scale_factor
    latents = []
    for i in tqdm(range(0, n, batch), desc=f"restyled pairs -> {path.name}", unit="batch", mininterval=10):
        p = prompts[i:i + batch]  # seeds: the step noise of a stochastic sampler, pair i's own
        out = engine.generate(p, seed=list(range(i, i + len(p))), noise=noise_all[i:i + batch],
                              init_latents=plain["latents"][i:i + batch], strength=spec.strength,
                              num_inference_steps=spec.steps, guidance_scale=spec.guidance,
                              height=side, width=side, output_type="latent")
        latents.append(out.images.float().cpu())
    tensors = {"noise": noise_all.contiguous(), "latents": torch.cat(latents).contiguous()}
    _save_pairs(path, tensors, record, prompts)
    return {**tensors, "prompts": prompts}


def read_pairs(path: str | os.PathLike) -> tuple[dict, dict]:
    """A pair cache as written by ``pair_cache``: (pairs, its spec record)."""
    from safetensors.torch import load_file, safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(path)
    pairs = {"noise": tensors["noise"], "latents": tensors["latents"], "prompts": json.loads(meta.get("prompts", "[]"))}
    return pairs, json.loads(meta.get("spec", "{}"))


def _save_pairs(path: Path, tensors: dict, record: dict, prompts: list[str]) -> None:
    """Atomically: a killed run leaves the old cache or none, never half a file."""
    from safetensors.torch import save

    atomic_write(path, save(tensors, metadata={"spec": json.dumps(record), "prompts": json.dumps(prompts)}))
