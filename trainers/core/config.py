"""Run configuration: a dataclass per method, loaded from YAML, overridden from the command line,
validated up front, and kept in the run folder as JSON.

    python -m trainers.methods.ssd --config trainers/configs/ssd_miniature.yaml \
        --set max_steps=100 --set alpha_end=0.3 --run-dir runs/x --dry-run
"""

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sdxs_core.files import atomic_write_json

from .prompts import prompt_source_error

LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "bf16")  # fp16 is refused: one-step distillation diverges in fp16 (DMD2)


@dataclass
class TrainConfig:
    """Options shared by every method. Progress is counted in images seen (steps x global batch)."""

    # models and data
    teacher: str = ""  # diffusers StableDiffusionPipeline folder: ODE sampler, VAE, text encoder
    prompts: str = "miniature"  # a registered source ("miniature": the world's captions) or a text file, one prompt a line
    num_prompts: int = 2048
    resolution: int = 0  # image side; 0 = the teacher U-Net's sample_size x VAE factor
    # run
    run_dir: str = "runs/train"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 4  # per process and micro-step
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0 = no clipping (the norm is still checked for NaN)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the end of training, after the warmup)
    max_minutes: float = 0.0  # wall-time budget of the training steps; 0 = none. Ends at whichever of
    # max_steps / max_minutes comes first, and the cosine LR and annealed values follow that progress
    # hardware
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "no"  # no | bf16 (autocast with fp32 master weights; the VAE stays fp32)
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 = no EMA of the trained network
    # checkpoints, logs, samples
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: str = ""  # "" | latest | path to a checkpoint-N folder
    log_every: int = 10
    validate_every: int = 0  # 0 = only at the end
    val_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square"])
    val_seed: int = 1234

    method: typing.ClassVar[str] = "base"

    # ---- validation -------------------------------------------------------------------------------
    def errors(self) -> list[str]:
        """Everything wrong with this config, as short messages naming the bad value."""
        e = []
        if not self.teacher:
            e.append("teacher is required: a diffusers pipeline folder")
        elif not (Path(self.teacher) / "model_index.json").is_file():
            e.append(f"teacher={self.teacher!r} is not a diffusers pipeline folder (no model_index.json)")
        if (why := prompt_source_error(self.prompts)) is not None:
            e.append(why)
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every", "num_prompts"):
            if getattr(self, name) < 1:
                e.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                e.append(f"{name}={getattr(self, name)} must be > 0")
        if self.mixed_precision not in MIXED_PRECISION:
            hint = " (fp16 diverges in one-step distillation; use bf16)" if self.mixed_precision == "fp16" else ""
            e.append(f"mixed_precision={self.mixed_precision!r} must be one of {MIXED_PRECISION}{hint}")
        if self.device not in ("auto", "cpu", "cuda"):
            e.append(f"device={self.device!r} must be auto, cpu or cuda")
        if not 0 <= self.ema_decay < 1:
            e.append(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.validate_every < 0 or self.max_grad_norm < 0 or self.warmup_steps < 0:
            e.append("validate_every, max_grad_norm and warmup_steps must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            e.append(f"lr_schedule={self.lr_schedule!r} must be one of {LR_SCHEDULES}")
        if self.max_minutes < 0:
            e.append(f"max_minutes={self.max_minutes} must be >= 0 (0 = no time budget)")
        if self.resolution < 0 or self.resolution % 8:
            e.append(f"resolution={self.resolution} must be 0 (the teacher's) or a positive multiple of 8")
        return e

    def validate(self) -> "TrainConfig":
        errors = self.errors()
        if errors:
            raise ValueError(f"invalid {self.method} config:\n  - " + "\n  - ".join(errors))
        return self

    def to_dict(self) -> dict:
        return {"method": self.method, **dataclasses.asdict(self)}


# ---- parsing ----------------------------------------------------------------------------------------
def _coerce(cls, name: str, value):
    """Turn a YAML/CLI value into the field's type (``--set lr=1e-4`` arrives as a string)."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"unknown option {name!r} for {cls.method}; known: {known}")
    tp = hints[name]
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if isinstance(value, str) and tp is not str:
        import yaml

        value = yaml.safe_load(value)  # "1e-4", "true", "[a, b]" -> typed values
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {tp.__name__}, got {value!r}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = typing.get_args(tp)[0]
        return origin(item(v) for v in value)
    if origin is dict:
        return dict(value)
    return value


def read_yaml_options(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A YAML file's options, on top of the file it names with ``defaults:`` (a path relative to it;
    chains allowed): the shared base of a world's configs, each config stating only what differs."""
    import yaml

    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: defaults form a loop ({' -> '.join(p.name for p in (*_seen, path))})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of options")
    base = data.pop("defaults", None)
    if base is None:
        return data
    if not isinstance(base, str) or not (path.parent / base).is_file():
        raise ValueError(f"{path}: defaults={base!r} must name a YAML file next to it")
    return {**read_yaml_options(path.parent / base, (*_seen, path)), **data}


def load_config(cls, path: str | None = None, overrides: dict | None = None):
    """``cls`` from a YAML file (with its ``defaults:``) then ``overrides`` (later wins); not yet
    validated. A file's ``method:`` must be ``cls``'s: a config is never run by another method."""
    values = {}
    if path:
        data = read_yaml_options(path)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ValueError(f"{path} is a config of method {method!r}, not {cls.method!r}")
        values.update(data)
    values.update(overrides or {})
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def parse_args(cls, argv=None, description: str = ""):
    """The command line every method shares. Returns ``(config, dry_run)``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of options")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any option (repeatable), e.g. --set lr=1e-4")
    parser.add_argument("--teacher", help="teacher pipeline folder")
    parser.add_argument("--run-dir")
    parser.add_argument("--resume", help="'latest' or a checkpoint-N folder")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    for key in ("teacher", "run_dir", "resume", "max_steps", "mixed_precision", "gradient_checkpointing", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    try:
        config = load_config(cls, args.config, overrides).validate()
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    return config, args.dry_run


def save_config(config: TrainConfig, run_dir: Path) -> None:
    atomic_write_json(run_dir / "config.json", config.to_dict())
