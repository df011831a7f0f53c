"""Command line: ``python -m sdxs_core generate ...`` and ``python -m sdxs_core info``."""

import argparse
import os
import sys
from pathlib import Path

from .errors import InvalidInputError, SDXSError, check
from .loading import BACKENDS
from .openvino_backend import PRECISIONS
from .presets import DEFAULT_MODEL


# flag -> the field its value is checked as (sdxs_core.errors.RANGES), so a CLI error names both
_NUMBERS = {"seed": "Seed", "num_images": "Images", "height": "Height", "width": "Width", "steps": "Steps",
            "guidance": "Guidance", "control_scale": "Control strength", "lora_scale": "LoRA scale"}


def _check_args(args) -> Path:
    """Everything that can be checked before a model loads: numbers, the output path, the control
    image, so a mistake costs no generation."""
    from PIL import Image

    for name, field in _NUMBERS.items():
        value = getattr(args, name)
        if value is not None:
            try:
                setattr(args, name, check(field, value))
            except InvalidInputError as e:
                raise InvalidInputError(e.field, f"{str(e).removeprefix(e.field + ': ')} "
                                        f"[--{name.replace('_', '-')}]") from None
    target = Path(args.out).expanduser()
    if target.suffix.lower() not in Image.registered_extensions():
        raise InvalidInputError("Out", f"'{target}' has no image extension: name it .png, .jpg or .webp")
    if target.is_dir():
        raise InvalidInputError("Out", f"'{target}' is a folder: give a file name such as {target / 'image.png'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError("Out", f"cannot create the folder '{target.parent}': {e.strerror or e}") from None
    if not os.access(target.parent, os.W_OK):
        raise InvalidInputError("Out", f"the folder '{target.parent}' is not writable")
    return target


def _generate(args) -> int:
    from .control import extract
    from .images import read_image_file
    from .loading import load_engine

    target = _check_args(args)
    control = read_image_file(args.control_image, "Control image") if args.control_image else None
    engine = load_engine(args.model, controlnet=args.controlnet, lora=args.lora, lora_scale=args.lora_scale,
                         device=args.device, dtype=args.dtype, backend=args.backend, precision=args.precision,
                         cache_dir=args.cache_dir)
    for event in getattr(engine.backend, "events", []):
        print(event)
    if control is not None:
        if engine.controlnet is None:
            raise SDXSError("--control-image needs a ControlNet: pass --controlnet PATH_OR_PRESET")
        control = extract(args.control_type, control).image
    out = engine.generate(args.prompt, seed=args.seed, num_images=args.num_images, height=args.height,
                          width=args.width, control_image=control, control_scale=args.control_scale,
                          num_inference_steps=args.steps, guidance_scale=args.guidance)
    for i, (image, seed) in enumerate(zip(out.images, out.seeds)):
        path = target if len(out.images) == 1 else target.with_name(f"{target.stem}-{i}{target.suffix}")
        try:
            image.save(path)
        except OSError as e:
            raise InvalidInputError("Out", f"cannot write '{path}': {e.strerror or e}") from None
        print(f"{path}  seed={seed}")
    for warning in out.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    t = out.timings
    print(f"{engine.name}: {t.total_ms:.0f} ms total (text {t.text_ms:.0f}, control {t.control_ms:.0f}, "
          f"unet {t.unet_ms:.0f}, decode {t.decode_ms:.0f}) on {engine.device}, {engine.backend_label}")
    return 0


def _info(args) -> int:
    from .devices import resolve_device, resolve_dtype
    from .sources import hub_offline, resolve_model_dir
    from .presets import PRESETS

    device = resolve_device(args.device)
    print(f"device: {device}  dtype: {str(resolve_dtype(device, args.dtype)).removeprefix('torch.')}  "
          f"hub: {'offline (HF_HUB_OFFLINE)' if hub_offline() else 'online if reachable'}")
    rows = [("preset", "kind", "base", "available", "source")]
    for p in PRESETS.values():
        try:
            resolve_model_dir(p.name, kind=p.kind) if (p.bundled or hub_offline()) else _cached(p.source)
            available = "yes"
        except SDXSError:
            available = "no"
        rows.append((p.name, p.kind, p.base, available, p.source))
    print(table(rows))
    return 0


def table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns as wide as their widest cell (the last one unpadded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in rows)


def _cached(repo_id: str) -> None:
    """Look in the local cache only: ``info`` must never start a download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .errors import ModelUnavailableError

    try:
        snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(repo_id) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxs_core", description="SDXS one-step generation")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate images from a prompt (and optionally a control image)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", required=True, help="output image (.png, .jpg, .webp); a batch writes OUT-0.png, ...")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="preset name, local diffusers folder or hub id")
    gen.add_argument("--seed", type=int, default=None, help="image i uses seed + i; random if omitted")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--controlnet", default=None, help="ControlNet folder, preset or hub id")
    gen.add_argument("--control-image", default=None)
    gen.add_argument("--control-type", default="canny", help="extractor applied to --control-image (canny, sketch, none)")
    gen.add_argument("--control-scale", type=float, default=1.0)
    gen.add_argument("--lora", default=None, help="LoRA file or folder (diffusers, PEFT or kohya)")
    gen.add_argument("--lora-scale", type=float, default=1.0)
    gen.add_argument("--steps", type=int, default=1, help="1 for SDXS; more only for multi-step teachers")
    gen.add_argument("--guidance", type=float, default=0.0, help="CFG scale (0 for SDXS)")
    gen.add_argument("--backend", default="auto", choices=BACKENDS,
                     help="torch, or openvino (CPU; converted once, cached); auto: openvino where it applies")
    gen.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                     help="openvino only; auto: mixed where the CPU has bf16, else fp32 (docs/backends.md)")
    gen.add_argument("--cache-dir", default=None, help="openvino's converted models (default ~/.cache/sdxs-studio)")
    info = sub.add_parser("info", help="device, dtype and which models are available locally")
    for p in (gen, info):
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
        p.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on CUDA, fp32 on CPU)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _generate(args) if args.command == "generate" else _info(args)
    except (SDXSError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, never a traceback
        return 2
