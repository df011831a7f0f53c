"""The model catalogue: which models exist, what each one is, and what fits what.

A browser never names a path. The server discovers what it offers (presets, and diffusers
folders, ControlNets and LoRAs under ``outputs/`` and ``assets/``) and the client picks one of
those entries by key; anything else is refused without touching the filesystem. Only the
operator, on the command line, may point at an arbitrary path.

Fit is decided from configs and safetensors headers (no weights are loaded, ``sdxs_core.fits``): a
ControlNet fits when its cross-attention width and block layout equal the U-Net's; a LoRA fits when
every layer it targets exists in the U-Net with the same widths.

Which one of these is loaded, and switching between them, is ``sdxs_core.hub``.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .control import CONTROL_NAMES
from .fits import BaseShape, lora_cross_dim, lora_key_shapes
from .presets import ASSETS, PRESETS

ROOT = ASSETS.parent
OUTPUTS = ROOT / "outputs"
MAX_DEPTH = 4  # trainer runs nest a few levels (run/checkpoint-N/...); deeper trees are not scanned

STYLES = {
    "none": "",
    "photo": ", photograph, 35mm, natural light, sharp focus",
    "cinematic": ", cinematic film still, dramatic lighting, shallow depth of field",
    "watercolor": ", watercolor painting, soft washes, paper texture",
    "anime": ", anime illustration, clean line art, vivid colors",
    "3d render": ", 3d render, soft global illumination, studio lighting",
    "pixel art": ", pixel art, 16-bit, crisp pixels",
}

TINY_NOTE = ("This is a **random tiny test model** (64x64, untrained): its images are noise. "
             "Install the miniature model (assets/miniature/sdxs) or start with "
             "`--model sdxs-512-dreamshaper --controlnet sdxs-512-dreamshaper-sketch` on a machine with the weights.")


@dataclass(frozen=True)
class Entry:
    key: str  # the only thing a client sends: a preset name or "outputs/..." / "assets/..."
    kind: str  # "pipeline" | "controlnet" | "lora"
    source: str  # what the loaders get: a preset name, hub id or absolute local path
    label: str
    base: str  # the base it was made for, as people read it
    control: str = ""  # ControlNets: the control type (extractor) it was trained on, "" if unknown


# The order in which a freshly loaded model picks its ControlNet: the Live tab opens on canny, so
# a canny/edges ControlNet makes the first frames right; an unknown type comes last.
CONTROL_PREFERENCE = ("canny", "sketch", "depth")


def control_type_of(folder: Path) -> str:
    """A local ControlNet's control type: ``train_info.json`` (our trainers write it), else a word
    in its folder name (``...-canny``, ``...-edges``, ``control_v11f1p_sd15_depth``), else ""; names and
    aliases from ``sdxs_core.control``'s one table."""
    info = read_json(folder / "train_info.json") or {}
    written = info.get("control_type") if isinstance(info, dict) else None
    if isinstance(written, str) and written in CONTROL_NAMES:
        return CONTROL_NAMES[written]
    words = folder.name.lower().replace("-", "_").split("_")
    return next((CONTROL_NAMES[w] for w in reversed(words) if w in CONTROL_NAMES), "")


def control_rank(entry: "Entry") -> int:
    return CONTROL_PREFERENCE.index(entry.control) if entry.control in CONTROL_PREFERENCE else len(CONTROL_PREFERENCE)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def local_path(entry: Entry) -> Path | None:
    """Where an entry's files are on this machine; None for a hub model (cached or not)."""
    preset = PRESETS.get(entry.source)
    path = Path(preset.source if preset else entry.source)
    return path if (preset is None or preset.bundled) and path.exists() else None


def discover(search_dirs: list[Path], extra: dict[str, Path] | None = None) -> list[Entry]:
    """Presets plus every pipeline, ControlNet and LoRA under ``search_dirs`` (keys are
    ``<dir name>/<relative path>``, e.g. ``outputs/my-run/final``) and in the ``extra`` folders
    (key -> folder: e.g. finished training jobs' outputs, ``jobs/0003-my-style``)."""
    entries = []
    for p in PRESETS.values():
        if p.bundled and not Path(p.source).exists():
            continue
        where = "bundled" if p.bundled else "hub"
        entries.append(Entry(p.name, p.kind, p.name, f"{p.name} ({where})", p.base, p.control_type or ""))
    for root in search_dirs:
        if root.is_dir():
            entries += _scan(root, root, 0)
    for key, folder in (extra or {}).items():
        if folder.is_dir():
            entries += _scan(folder, folder, MAX_DEPTH, key)
    return entries


def _scan(root: Path, folder: Path, depth: int, root_key: str | None = None) -> list[Entry]:
    root_key = root_key or root.name
    key = f"{root_key}/{folder.relative_to(root).as_posix()}".removesuffix("/.")
    if (folder / "model_index.json").is_file():
        unet = read_json(folder / "unet" / "config.json")
        base = str(BaseShape.from_config(unet)) if unet else "unknown"
        return [Entry(key, "pipeline", str(folder), key, base)]
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if config and config.get("_class_name") == "ControlNetModel":
        control = control_type_of(folder)
        label = f"{key} ({control})" if control else key
        return [Entry(key, "controlnet", str(folder), label, str(BaseShape.from_config(config)), control)]
    if (folder / "adapter_config.json").is_file():
        shapes = lora_key_shapes(folder)
        return [Entry(key, "lora", str(folder), key, f"cross-attn {lora_cross_dim(shapes)}")] if shapes else []
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir() and depth < MAX_DEPTH:
            found += _scan(root, child, depth + 1, root_key)
        elif child.suffix == ".safetensors" and (shapes := lora_key_shapes(child)):
            name = f"{root_key}/{child.relative_to(root).as_posix()}"
            found.append(Entry(name, "lora", str(child), name, f"cross-attn {lora_cross_dim(shapes)}"))
    return found


def ensure_tiny_model(outputs: Path = OUTPUTS) -> tuple[Path, Path]:
    """A random tiny pipeline and its ControlNet under ``outputs/`` (written once): lets the app
    run end to end on a fresh clone before any real model is installed."""
    from .testkit import write_tiny_controlnet, write_tiny_pipeline

    model, controlnet = outputs / "tiny-model", outputs / "tiny-model-controlnet"
    if not (model / "model_index.json").is_file():
        write_tiny_pipeline(model)
    if not (controlnet / "config.json").is_file():
        write_tiny_controlnet(model, controlnet)
    return model, controlnet
