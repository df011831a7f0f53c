"""Rebuild every shipped weight of the miniature world with one command.

    python -m trainers.miniature.recipe                    # everything, on the CPU
    python -m trainers.miniature.recipe --stages teacher export --teacher-minutes 85
    python -m trainers.miniature.recipe --stages continue export --continue-minutes 125

Stages, in order (each writes under ``--work`` and the shipped copies under ``--assets``):
  tokenizer    CLIP-format tokenizer trained on the captions          -> assets/miniature/tokenizer
  classifier   the evaluator's attribute classifier (CPU, ~15 min)    -> assets/miniature/classifier
  vae          AutoencoderKL, 4 latent channels, 4x downsampling      -> work/vae
  teacher      text-encoder pretraining, then the SD-shaped U-Net on
               the frozen encoder (epsilon, min-SNR, CFG dropout)     -> work/teacher
  continue     more training of that teacher, a fresh cosine LR from
               3e-4 over its own budget (``--continue-minutes``)      -> work/teacher-continued
  export       fp16 diffusers folder of the teacher (the continued
               one when it exists)                                    -> assets/miniature/teacher
               (--export-name teacher-sd4 --work runs/gpu-teacher: the SD1.5-layout one, see MODE=teacher
               in scripts/gpu_session.sh)

The settings are those of the shipped weights (``train_stats.json`` in each folder records steps,
batch and wall time). The shipped VAE was trained on an H200 (72 s; ``--device cuda``); the teacher
on this 2-core CPU under wall-time budgets (``--teacher-minutes``, then ``--continue-minutes``), so
its step count depends on the machine.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from . import classifier, teacher, text

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "miniature"
STAGES = ("tokenizer", "classifier", "vae", "teacher", "continue", "export")
SHIPPED = {  # what produced assets/miniature (train_stats.json records the same)
    "classifier": dict(steps=1000, batch=128),
    "vae": dict(steps=1377, batch=256, n_data=60_000),
    "teacher": dict(steps=100_000, batch=64, n_data=60_000, lr=5e-4, text_steps=600),
    "continue": dict(steps=100_000, batch=64, n_data=60_000, lr=3e-4),
}


def export_fp16(src: Path, dst: Path, link_to: list[Path] = ()) -> dict:
    """Half-precision copy for shipping: ~2x smaller; the engine upcasts on load for the CPU. Parts
    identical to a ``link_to`` folder's (a second teacher on the same VAE and text encoder) become links."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(src), safety_checker=None, requires_safety_checker=False)
    stats = json.loads((src / "train_stats.json").read_text())
    teacher.save_pipeline(dst, pipe.vae.half(), pipe.text_encoder.half(), pipe.tokenizer, pipe.unet.half(),
                          pipe.scheduler.config, stats, link_to=link_to)
    return {"bytes": sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()),
            "links": sorted(p.name for p in dst.iterdir() if p.is_symlink())}


def run(stages, device: torch.device, work: Path, assets: Path, teacher_minutes: float | None,
        continue_minutes: float | None = None, export_name: str = "teacher") -> None:
    work.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        t0 = time.time()
        if stage == "tokenizer":
            text.save_tokenizer(text.build_tokenizer(), str(assets / "tokenizer"))
            result = {"dir": str(assets / "tokenizer")}
        elif stage == "classifier":
            result = classifier.train_classifier(str(assets / "classifier"), **SHIPPED["classifier"])
        elif stage == "vae":
            result = teacher.train_vae(work / "vae", device=device, **SHIPPED["vae"])
        elif stage == "teacher":
            budget = teacher_minutes * 60 if teacher_minutes else None
            result = teacher.train_teacher(work / "vae", work / "teacher", device=device, save_every_s=600,
                                           budget_s=budget, **SHIPPED["teacher"])
        elif stage == "continue":
            budget = continue_minutes * 60 if continue_minutes else None
            result = teacher.train_teacher(work / "vae", work / "teacher-continued", device=device,
                                           init=work / "teacher", save_every_s=1200, budget_s=budget,
                                           **SHIPPED["continue"])
        else:
            continued = work / "teacher-continued"
            source = continued if (continued / "model_index.json").is_file() else work / "teacher"
            result = export_fp16(source, assets / export_name, link_to=[assets / "teacher"])
        print(f"[{stage}] {time.time() - t0:.0f} s: {json.dumps(result, default=str)[:300]}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="for the vae and teacher stages")
    parser.add_argument("--work", type=Path, default=Path("runs/miniature"))
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--teacher-minutes", type=float, default=85.0,
                        help="the teacher's wall-time budget, text-encoder pretraining included")
    parser.add_argument("--continue-minutes", type=float, default=125.0,
                        help="the continuation's wall-time budget, data encoding included")
    parser.add_argument("--export-name", default="teacher",
                        help="the export's folder under --assets; another name (teacher-sd4 from a --work holding "
                             "the SD1.5-layout teacher) links the parts it shares with assets/.../teacher")
    args = parser.parse_args(argv)
    run(args.stages, torch.device(args.device), args.work, args.assets, args.teacher_minutes, args.continue_minutes,
        args.export_name)


if __name__ == "__main__":
    main()
