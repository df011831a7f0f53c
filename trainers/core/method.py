"""What every method shares: the frozen teacher, prompts, the teacher's ODE pairs, batches,
validation samples through ``sdxs_core``'s engine, and export as a diffusers pipeline folder.

A method subclasses ``Method``, declares its config fields, and writes ``setup`` (load networks,
return the ``Phase``s: trained network + loss). ``main`` gives it the shared command line.
"""

import copy
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .components import load_components, load_vae
from .config import TrainConfig, parse_args
from .noise_schedule import NoiseSchedule
from .pairs import PairSpec, pair_cache
from .pipeline_folder import save_pipeline_folder
from .prompts import encode_prompts, load_prompts


@dataclass
class PairConfig(TrainConfig):
    """Options of methods that learn from the teacher's ODE noise -> image pairs."""

    num_pairs: int = 256
    teacher_steps: int = 20  # the ODE sampler (the teacher's own scheduler)
    teacher_guidance: float = 3.0
    pair_cache: str = ""  # safetensors file; "" = run_dir/pairs.safetensors. Share it between methods.
    pair_batch: int = 0  # pairs sampled per teacher batch; 0 = 16 on the CPU, 256 on a GPU

    def errors(self):
        e = super().errors()
        if self.num_pairs < 1 or self.teacher_steps < 1 or self.pair_batch < 0:
            e.append("num_pairs and teacher_steps must be >= 1, pair_batch >= 0")
        return e


def student_errors(student: str) -> list[str]:
    """Up-front check of a ``student`` option (copy | block_removed | folder)."""
    from pathlib import Path

    if student in ("copy", "block_removed") or (Path(student) / "config.json").is_file() \
            or (Path(student) / "unet" / "config.json").is_file():
        return []
    return [f"student={student!r} must be copy, block_removed, or a pipeline / U-Net folder (run the earlier method first)"]


@contextmanager
def borrowed(*modules):
    """The engine freezes what it is given (eval, no grad); give back the training flags after."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


class Prepared(torch.nn.Module):
    """``method.nets[name]`` looked up at call time: the loop replaces each trained network by its
    accelerate-prepared wrapper (DDP gradient sync) after ``setup``, so a loss or a wrapper built during
    ``setup`` holds this instead of the network. Holds no parameters of its own."""

    def __init__(self, method: "Method", name: str):
        super().__init__()
        self.method, self.name = [method], name  # a list: the method is not registered as a submodule

    @property
    def module(self) -> torch.nn.Module:
        """The plain network (what ``losses.unwrap`` returns): hooks go on it, not on a wrapper."""
        from .losses import unwrap

        return unwrap(self.method[0].nets[self.name])

    def forward(self, *args, **kwargs):
        return self.method[0].nets[self.name](*args, **kwargs)


class Method(ABC):
    config_cls = PairConfig
    ema_target = "student"
    progress = 0.0  # share of the run done, set by the loop before each step

    def __init__(self, config: TrainConfig):
        self.config = config
        self.nets: dict[str, torch.nn.Module] = {}
        self.device = torch.device("cpu")

    # ---- set-up pieces ------------------------------------------------------------------------------
    def load_teacher(self, accelerator) -> dict:
        """The teacher pipeline's components, frozen, on the device; the VAE stays fp32."""
        self.device = accelerator.device
        self.teacher = load_components(self.config.teacher, self.device)
        for name in ("unet", "text_encoder", "vae"):
            self.teacher[name].eval().requires_grad_(False)
        self.schedule = NoiseSchedule(self.teacher["scheduler"].config, self.device)
        vae_factor = 2 ** (len(self.teacher["vae"].config.block_out_channels) - 1)
        self.resolution = self.config.resolution or self.teacher["unet"].config.sample_size * vae_factor
        latent = self.resolution // vae_factor
        self.latent_shape = (self.teacher["unet"].config.in_channels, latent, latent)  # one noise input
        self.prompts = load_prompts(self.config.prompts, self.config.num_prompts, self.config.seed)
        self.uncond = encode_prompts(self.teacher["tokenizer"], self.teacher["text_encoder"], [""], self.device)
        return self.teacher

    def pair_spec(self, **changes) -> PairSpec:
        """The teacher's ODE pairs this run's options describe (``changes``: e.g. a LoRA teacher)."""
        c = self.config
        return PairSpec(teacher=c.teacher, prompts=tuple(self.prompts), n=c.num_pairs, steps=c.teacher_steps,
                        guidance=c.teacher_guidance, resolution=self.resolution, seed=c.seed, **changes)

    def shared_cache(self, accelerator, make, path, spec) -> dict:
        """``make(path, spec, device, batch)`` (a pair cache) run on the main process, then read by all."""
        if accelerator.is_main_process:
            make(path, spec, self.device, batch=self.pair_batch())
        accelerator.wait_for_everyone()
        return make(path, spec, self.device)

    def load_pairs(self, accelerator) -> dict:
        """The teacher's ODE pairs: made on the main process, then read by all."""
        c = self.config
        path = Path(c.pair_cache or Path(c.run_dir) / "pairs.safetensors")
        self.pairs = self.shared_cache(accelerator, pair_cache, path, self.pair_spec())
        return self.pairs

    def prepared(self, name: str) -> Prepared:
        """The trained network ``name`` as the loop will have prepared it (see ``Prepared``)."""
        return Prepared(self, name)

    def pair_batch(self) -> int:
        return self.config.pair_batch or (16 if self.device.type == "cpu" else 256)

    @abstractmethod
    def setup(self, accelerator) -> list:
        """Build the networks (``self.nets``) and return the training phases."""

    # ---- per step -----------------------------------------------------------------------------------
    def step_seed(self, step: int, micro: int, accelerator) -> int:
        """All randomness of a step derives from (seed, step, micro-step, process): a resumed run
        draws exactly what an uninterrupted one would, whatever the global RNG state."""
        return hash((self.config.seed, step, micro, accelerator.process_index)) % 2**62

    def batch(self, step: int, micro: int, accelerator) -> dict:
        """A batch of teacher pairs with their prompt embeddings, and the step's generator."""
        seed = self.step_seed(step, micro, accelerator)
        gen = torch.Generator(self.device).manual_seed(seed)
        idx = torch.randint(len(self.pairs["noise"]), (self.config.batch_size,), generator=torch.Generator().manual_seed(seed))
        prompts = [self.pairs["prompts"][i] for i in idx.tolist()]
        return {"noise": self.pairs["noise"][idx].to(self.device), "latents": self.pairs["latents"][idx].to(self.device),
                "embeds": encode_prompts(self.teacher["tokenizer"], self.teacher["text_encoder"], prompts, self.device),
                "generator": gen, "index": idx}

    def anneal_position(self, step: int) -> int:
        """The step that annealed values (SSD's alpha, lambda_FM) follow: ``step``, or under a
        wall-time budget that ends first, the same share of ``max_steps``."""
        return max(step, round(self.progress * self.config.max_steps))

    def scalars(self, step: int) -> dict:
        """Annealed hyperparameters etc. to log."""
        return {}

    # ---- validation and export ------------------------------------------------------------------------
    def sample_unet(self) -> torch.nn.Module:
        from .losses import unwrap

        return unwrap(self.nets["student"])

    def engine(self, unet, vae=None):
        from sdxs_core.engine import OneStepEngine

        from .noise_schedule import one_step_scheduler

        t = self.teacher
        return OneStepEngine(t["tokenizer"], t["text_encoder"], unet, vae or t["vae"], one_step_scheduler(t["scheduler"]))

    @torch.no_grad()
    def validation_images(self):
        """One-step samples of the current student for ``val_prompts`` (fixed seeds), via the engine."""
        unet = self.sample_unet()
        with borrowed(unet):
            out = self.engine(unet).generate(self.config.val_prompts, seed=self.config.val_seed,
                                             height=self.resolution, width=self.resolution, output_type="np")
        return out.images

    def export(self, out: Path, nets: dict, info: dict) -> Path:
        """The student as a one-step diffusers pipeline folder (teacher's text encoder, tokenizer, VAE)."""
        vae = load_vae(self.config.vae) if getattr(self.config, "vae", "") else None
        return save_pipeline_folder(out, self.teacher, unet=copy.deepcopy(nets["student"]).float(), vae=vae,
                                    extra={**info, "teacher": self.config.teacher})


def main(method_cls, argv=None, doc: str = ""):
    """``python -m trainers.methods.<name> --config FILE [--set k=v] [--dry-run]``."""
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .loop import train

    config, dry_run = parse_args(method_cls.config_cls, argv, doc)
    if dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return None
    out = train(config, method_cls(config))
    print(f"saved {out}")
    return out
