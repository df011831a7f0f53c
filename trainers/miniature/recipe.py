"""Rebuild every shipped weight of the miniature world with one command.

    python -m trainers.miniature.recipe --device cuda      # the shipped run: VAE + teacher on a GPU,
                                                           # then the teacher's CPU continuation
    python -m trainers.miniature.recipe --stages teacher-cpu --device cpu   # one stage

Stages, in order (each writes under ``--work`` and the shipped copies under ``--assets``):
  tokenizer    CLIP-format tokenizer trained on the captions          -> assets/miniature/tokenizer
  classifier   the evaluator's attribute classifier (CPU, ~15 min)    -> assets/miniature/classifier
  vae          AutoencoderKL, 4 latent channels, 4x downsampling      -> work/vae
  teacher      SD-shaped U-Net + text encoder, epsilon, CFG dropout   -> work/teacher-gpu
  teacher-cpu  continuation of the teacher on the CPU at a lower LR   -> work/teacher
  export       fp16 diffusers folder of the latest teacher            -> assets/miniature/teacher

The step counts are those of the shipped weights (see ``train_stats.json`` in each folder, whose
``history`` lists every segment); the first teacher segment ran on an H200, the continuation here.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from . import classifier, teacher, text

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "miniature"
STAGES = ("tokenizer", "classifier", "vae", "teacher", "teacher-cpu", "export")
SHIPPED = {  # what produced assets/miniature (train_stats.json records the same)
    "classifier": dict(steps=1000, batch=128),
    "vae": dict(steps=1377, batch=256, n_data=60_000),
    "teacher": dict(steps=1528, batch=512, n_data=150_000, lr=4e-4),
    "teacher-cpu": dict(batch=96, n_data=40_000, lr=2e-4),
}


def export_fp16(src: Path, dst: Path) -> dict:
    """Half-precision copy for shipping: ~2x smaller; the engine upcasts on load for the CPU."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(src), safety_checker=None, requires_safety_checker=False)
    stats = json.loads((src / "train_stats.json").read_text())
    teacher.save_pipeline(dst, pipe.vae.half(), pipe.text_encoder.half(), pipe.tokenizer, pipe.unet.half(),
                          pipe.scheduler.config, stats)
    return {"bytes": sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())}


def run(stages, device: torch.device, work: Path, assets: Path, cpu_steps: int, cpu_minutes: float | None) -> None:
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
            result = teacher.train_teacher(work / "vae", work / "teacher-gpu", device=device, **SHIPPED["teacher"])
        elif stage == "teacher-cpu":
            result = teacher.train_teacher(work / "vae", work / "teacher", steps=cpu_steps, device=torch.device("cpu"),
                                           init=work / "teacher-gpu", save_every_s=600,
                                           budget_s=cpu_minutes * 60 if cpu_minutes else None, **SHIPPED["teacher-cpu"])
        else:  # the CPU continuation when it ran, else the GPU segment alone
            src = work / "teacher" if (work / "teacher").is_dir() else work / "teacher-gpu"
            result = export_fp16(src, assets / "teacher")
        print(f"[{stage}] {time.time() - t0:.0f} s: {json.dumps(result, default=str)[:300]}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="for the vae and teacher stages")
    parser.add_argument("--work", type=Path, default=Path("runs/miniature"))
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--cpu-steps", type=int, default=100_000, help="teacher-cpu step cap")
    parser.add_argument("--cpu-minutes", type=float, default=70.0, help="teacher-cpu wall-time budget")
    args = parser.parse_args(argv)
    run(args.stages, torch.device(args.device), args.work, args.assets, args.cpu_steps, args.cpu_minutes)


if __name__ == "__main__":
    main()
