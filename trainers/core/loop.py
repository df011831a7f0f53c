"""The training loop every method shares, on accelerate: CPU, one GPU, or ``accelerate launch``
(multi-GPU, FSDP) with the same code.

A method hands over ``Phase``s: a trained network and a loss callable ``(batch, step) -> (loss, logs)``.
Each step runs the phases in order (Algorithm 1 alternates online DM and student this way), each
with its own optimizer. The loop owns everything else: mixed precision, gradient accumulation and
checkpointing, checkpoint/resume to the exact step, EMA, the NaN guard, logs and validation samples.
"""

import importlib.util
import io
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sdxs_core.files import atomic_write, replace_dir

from .config import TrainConfig, save_config
from .ema import EMA
from .losses import unwrap
from .schedules import lr_at


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/inf loss or gradient; the last good checkpoint is kept."""


class TrainingStopped(Exception):
    """Training stopped on request (``stop`` returned true) after saving a checkpoint to resume from."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"stopped on request at step {step}; checkpoint {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class Phase:
    name: str
    module: torch.nn.Module  # the trained network; the loop prepares it and puts it in method.nets[name]
    loss: Callable  # (batch, step) -> (loss, logs)
    every: int = 1  # run at steps where step % every == 0 (e.g. a generator updated every 10th step)
    lr: float | None = None  # None: config.lr
    checkpointing: bool = True  # honour --gradient_checkpointing for this network
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)


# ---- checkpoints ------------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None  # nothing yet: start from scratch
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume={resume!r} is not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """``save_state`` into a temporary folder, then rename: a checkpoint-N folder is always complete."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        replace_dir(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---- logs and samples ---------------------------------------------------------------------------------
def _trim_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint: they will be logged again."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        atomic_write(path, "".join(ln + "\n" for ln in lines))


def save_grid(images: np.ndarray, path: Path) -> None:
    """``[N, H, W, 3]`` in [0, 1] -> one PNG row, written atomically."""
    from PIL import Image

    row = np.concatenate(list(images), axis=1)
    png = io.BytesIO()
    Image.fromarray((row * 255).round().clip(0, 255).astype(np.uint8)).save(png, format="PNG")
    atomic_write(path, png.getvalue())


def _device_of(config: TrainConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


# ---- the loop ---------------------------------------------------------------------------------------
def train(config: TrainConfig, method, on_step: Callable[[int], None] | None = None,
          stop: Callable[[], bool] | None = None) -> Path:
    """Run ``method`` under ``config``; returns the exported output folder (run_dir/final).

    ``on_step(step)`` runs after every step; ``stop()`` is asked after every step too (on every
    process; any one saying yes stops all): the loop then saves a checkpoint and raises
    ``TrainingStopped``, so a cancelled background job resumes where it stopped."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    # 1. initialise
    config.validate()
    run_dir = Path(config.run_dir)
    trackers = ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a process-wide singleton: let one process run several trainings
    accelerator = Accelerator(
        cpu=_device_of(config) == "cpu", mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps, log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")))
    set_seed(config.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir)
    if trackers:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}
        accelerator.init_trackers(config.method, config=flat)

    # 2. networks and optimizers (frozen networks stay outside accelerate: nothing to sync or save)
    phases = method.setup(accelerator)
    for phase in phases:
        if config.gradient_checkpointing and phase.checkpointing and hasattr(phase.module, "enable_gradient_checkpointing"):
            phase.module.enable_gradient_checkpointing()
        phase.module.train()
        params = [p for p in phase.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=phase.lr or config.lr, betas=tuple(config.adam_betas),
                                weight_decay=config.weight_decay)
        phase.module, phase.optimizer = accelerator.prepare(phase.module, opt)
        method.nets[phase.name] = phase.module
    ema = None
    if config.ema_decay > 0:
        ema = EMA(unwrap(method.nets[method.ema_target]), config.ema_decay)
        accelerator.register_for_checkpointing(ema)

    # 3. resume: weights, optimizers, EMA and RNG states, and the step from trainer_state.json
    start, seconds_before = 0, 0.0
    checkpoint = resolve_resume(run_dir, config.resume)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        start, seconds_before = state["step"], state.get("train_seconds", 0.0)
        accelerator.print(f"resumed from {checkpoint} at step {start}")
        if accelerator.is_main_process:
            _trim_log(run_dir / "log.jsonl", start)
    images_per_step = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes

    def last_good() -> str:
        found = list_checkpoints(run_dir)
        return f"{found[-1]} (kept; continue with --resume latest)" if found else "none yet (no checkpoint was saved)"

    def guard(value: torch.Tensor, what: str, step: int):
        finite = accelerator.gather(torch.isfinite(value.detach().float()).reshape(1)).all()
        if not finite:
            raise NonFiniteLossError(f"{what} became {value.item()} at step {step + 1} (after {step} good steps, "
                                     f"{step * images_per_step} images seen); training stopped. "
                                     f"Last good checkpoint: {last_good()}")

    # 4. train (until max_steps, or the wall-time budget: the main process's clock decides for all)
    bar = tqdm(initial=start, total=config.max_steps, desc=config.method, disable=not accelerator.is_local_main_process)
    t0, step = time.time(), start
    budget = config.max_minutes * 60

    def train_seconds() -> float:
        return seconds_before + time.time() - t0

    def progress(step: int) -> float:
        done = step / config.max_steps
        if budget:
            done = max(done, accelerator.reduce(torch.tensor([train_seconds() / budget], device=accelerator.device),
                                                reduction="max").item())
        return min(done, 1.0)

    modules = [p.module for p in phases]
    method.progress = progress(step)
    if start and method.progress >= 1.0:  # a checkpoint export, or a resume that forgot to raise the budget
        accelerator.print(f"nothing to train: step {start} (after {seconds_before / 60:.1f} min) already reaches "
                          f"max_steps={config.max_steps} / max_minutes={config.max_minutes:g}; the output is that "
                          "checkpoint's weights (raise max_steps or max_minutes to train on)")
    while method.progress < 1.0:
        logs: dict[str, float] = {}
        for micro in range(config.gradient_accumulation_steps):
            batch = method.batch(step, micro, accelerator)
            with accelerator.accumulate(*modules):
                for phase in phases:
                    if step % phase.every:
                        continue
                    for group in phase.optimizer.param_groups:
                        group["lr"] = lr_at(step, phase.lr or config.lr, config.warmup_steps, config.lr_schedule,
                                            method.progress)
                    with accelerator.autocast():
                        loss, phase_logs = phase.loss(batch, step)
                    guard(loss, f"the {phase.name} loss", step)
                    logs[f"{phase.name}/loss"] = loss.item()
                    logs[f"{phase.name}/lr"] = phase.optimizer.param_groups[0]["lr"]
                    logs.update({f"{phase.name}/{k}": v for k, v in phase_logs.items()})
                    if not loss.requires_grad:  # the phase is off for now (e.g. a GAN before gan_start)
                        continue
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(phase.module.parameters(), config.max_grad_norm or math.inf)
                        guard(torch.as_tensor(norm), f"the {phase.name} gradient norm", step)
                        logs[f"{phase.name}/grad_norm"] = float(norm)
                    phase.optimizer.step()
                    phase.optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unwrap(method.nets[method.ema_target]), step)
        step += 1
        bar.update()
        method.progress = progress(step)
        finished = method.progress >= 1.0

        if step % config.log_every == 0 or finished or step == start + 1:
            record = {"step": step, "images_seen": step * images_per_step, "seconds": round(time.time() - t0, 2),
                      **{k: round(v, 6) for k, v in logs.items()}, **method.scalars(step - 1)}
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.endswith("/loss")}, refresh=False)
            if accelerator.is_main_process:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if step % config.checkpoint_every == 0 or finished:
            save_checkpoint(accelerator, run_dir, step, {"step": step, "images_seen": step * images_per_step,
                                                         "train_seconds": round(train_seconds(), 2)},
                            config.keep_checkpoints)
        if config.validate_every and step % config.validate_every == 0 and not finished:
            _validate(accelerator, method, run_dir, step)
        if on_step is not None:
            on_step(step)
        if stop is not None and not finished and _anyone(accelerator, stop()):
            state = {"step": step, "images_seen": step * images_per_step, "train_seconds": round(train_seconds(), 2)}
            saved = save_checkpoint(accelerator, run_dir, step, state, config.keep_checkpoints)
            bar.close()
            accelerator.end_training()
            raise TrainingStopped(step, saved)
    bar.close()

    # 5. save: EMA weights if kept, else the trained ones
    _validate(accelerator, method, run_dir, step)
    out = run_dir / "final"
    if accelerator.is_main_process:
        nets = {name: unwrap(net) for name, net in method.nets.items()}
        if ema is not None:
            import copy

            nets[method.ema_target] = copy.deepcopy(nets[method.ema_target])
            ema.copy_to(nets[method.ema_target])
        method.export(out, nets, {"steps": step, "images_seen": step * images_per_step, "method": config.method})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def _anyone(accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any one of them."""
    if accelerator.num_processes == 1:
        return bool(flag)
    return accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="max").item() > 0


def _validate(accelerator, method, run_dir: Path, step: int) -> None:
    if not accelerator.is_main_process:
        return
    images = method.validation_images()
    if images is not None:
        save_grid(images, run_dir / "samples" / f"step-{step:06d}.png")
