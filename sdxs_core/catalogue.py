"""The model catalogue: which models exist, what each one is, and what fits what.

A browser never names a path. The server discovers what it offers (presets, and diffusers
folders, ControlNets and LoRAs under ``outputs/`` and ``assets/``) and the client picks one of
those entries by key; anything else is refused without touching the filesystem. Only the
operator, on the command line, may point at an arbitrary path.

Fit is decided from configs and safetensors headers (no weights are loaded, ``sdxs_core.fits``): a
ControlNet fits when its cross-attention width and block layout equal the U-Net's; a LoRA fits when
every layer it targets exists in the U-Net with the same widths.

Each model is offered once (a preset and the folder it names are one entry), marked with what it
is: a one-step student, or a multi-step teacher (``steps``), which the hub leaves out of the app's
model list (see ``ModelHub.choices``). Style presets are per family (``FAMILY_STYLES``).

Which one of these is loaded, and switching between them, is ``sdxs_core.hub``.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from .control import CONTROL_NAMES
from .fits import FAMILY_SHAPES, BaseShape, lora_cross_dim, lora_key_shapes
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
# Styles are prompt words, so they mean something only to a text encoder that learnt them: the SD
# families' CLIP did; the miniature world's encoder learnt only its own captions, which never state a
# style (its style is a LoRA, pastel), so it is offered none. A family not listed gets every style.
FAMILY_STYLES = {"sd1.5": tuple(STYLES), "sd2.1": tuple(STYLES), "miniature": ("none",), "miniature-sd4": ("none",)}
CLIP_VOCAB = 49408  # the CLIP tokenizer's size, shared by every SD1.x / SD2.x text encoder

# A pipeline is one-step when its scheduler lands a single step on t = T-1: the students' DDPM (and
# LCM / Euler) schedulers with trailing spacing. Any other sampler (the teachers' DPM-Solver, SD's PNDM)
# is a multi-step teacher, run with TEACHER_STEPS: the steps the evaluator samples the miniature teachers with.
ONE_STEP_SCHEDULERS = ("DDPMScheduler", "LCMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                       "TCDScheduler")
TEACHER_STEPS = 25

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
    family: str = ""  # pipelines: a FAMILY_STYLES key ("miniature", "sd1.5", ...), "" if unknown
    steps: int = 1  # pipelines: 1 for a one-step model, TEACHER_STEPS for a multi-step teacher


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


def styles_for(family: str) -> tuple[str, ...]:
    """The style presets that mean something to a model of ``family``."""
    return FAMILY_STYLES.get(family, tuple(STYLES))


def family_of(folder: Path) -> str:
    """A local pipeline's family: "miniature" when its text encoder has a vocabulary of its own (not
    CLIP's: the miniature world's, or the test kit's), else the released family whose U-Net shape it
    has, else ""."""
    text = read_json(folder / "text_encoder" / "config.json") or {}
    if text.get("vocab_size", CLIP_VOCAB) != CLIP_VOCAB:
        return "miniature"
    try:
        shape = BaseShape.from_config(read_json(folder / "unet" / "config.json") or {})
    except (KeyError, TypeError, ValueError):
        return ""
    return next((name for name, known in FAMILY_SHAPES.items() if known == shape), "")


def steps_of(folder: Path) -> int:
    """1 for a one-step pipeline, TEACHER_STEPS for a multi-step teacher, judged by its scheduler; a
    folder without a readable scheduler config counts as one-step (loading it says what is wrong)."""
    config = read_json(folder / "scheduler" / "scheduler_config.json")
    if not isinstance(config, dict):
        return 1
    name = config.get("_class_name")
    one_step = name in ONE_STEP_SCHEDULERS and (name == "LCMScheduler" or config.get("timestep_spacing") == "trailing")
    return 1 if one_step else TEACHER_STEPS


def pipeline_entry(key: str, folder: Path, label: str | None = None) -> Entry:
    """A local pipeline folder's entry, labelled as a teacher when it samples in many steps."""
    unet = read_json(folder / "unet" / "config.json")
    base = str(BaseShape.from_config(unet)) if unet else "unknown"
    steps, label = steps_of(folder), label or key
    return Entry(key, "pipeline", str(folder), f"{label} (teacher, {steps} steps)" if steps > 1 else label, base,
                 family=family_of(folder), steps=steps)


def same_files(entry: Entry) -> tuple[str, str]:
    """What makes two entries one: their kind and resolved local path (a hub model: its source)."""
    path = local_path(entry)
    return entry.kind, str(path.resolve()) if path is not None else entry.source


def local_path(entry: Entry) -> Path | None:
    """Where an entry's files are on this machine; None for a hub model (cached or not)."""
    preset = PRESETS.get(entry.source)
    path = Path(preset.source if preset else entry.source)
    return path if (preset is None or preset.bundled) and path.exists() else None


def discover(search_dirs: list[Path], extra: dict[str, Path] | None = None) -> list[Entry]:
    """Presets plus every pipeline, ControlNet and LoRA under ``search_dirs`` (keys are
    ``<dir name>/<relative path>``, e.g. ``outputs/my-run/final``) and in the ``extra`` folders
    (key -> folder: e.g. finished training jobs' outputs, ``jobs/0003-my-style``), each set of files
    once."""
    entries = []
    for p in PRESETS.values():
        if p.bundled and not Path(p.source).exists():
            continue
        where = "bundled" if p.bundled else "hub"
        family = p.base if p.kind == "pipeline" else ""
        entries.append(Entry(p.name, p.kind, p.name, f"{p.name} ({where})", p.base, p.control_type or "", family))
    for root in search_dirs:
        if root.is_dir():
            entries += _scan(root, root, 0)
    for key, folder in (extra or {}).items():
        if folder.is_dir():
            entries += _scan(folder, folder, MAX_DEPTH, key)
    # a preset and the folder it names (miniature, assets/miniature/sdxs) are one entry: the preset's, else the
    # folder's own path before a link to it
    def rank(entry: Entry) -> tuple[bool, bool]:
        return entry.key not in PRESETS, Path(entry.source).is_symlink()

    best: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        files = same_files(entry)
        if files not in best or rank(entry) < rank(best[files]):
            best[files] = entry
    return [entry for entry in entries if best[same_files(entry)] is entry]


def _scan(root: Path, folder: Path, depth: int, root_key: str | None = None) -> list[Entry]:
    root_key = root_key or root.name
    key = f"{root_key}/{folder.relative_to(root).as_posix()}".removesuffix("/.")
    if (folder / "model_index.json").is_file():
        return [pipeline_entry(key, folder)]
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
