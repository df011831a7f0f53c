"""Writing a trained model as a diffusers folder: atomically, with components identical to a shipped
neighbour's stored once (a relative link), and a neighbour's links into a replaced folder detached first."""

import filecmp
import json
import os
import shutil
import tempfile
from pathlib import Path

from sdxs_core.files import replace_dir

from .noise_schedule import one_step_scheduler


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


def load_in_float32(folder: Path) -> None:
    """transformers loads a component in the dtype its config names ("auto"), diffusers in float32:
    a text encoder stored in half precision would then meet a float32 U-Net in plain
    ``StableDiffusionPipeline.from_pretrained``. Weights stay half on disk; configs ask for float32."""
    for config in folder.glob("*/config.json"):
        data = json.loads(config.read_text())
        if data.get("dtype") in ("float16", "bfloat16") or data.get("torch_dtype") in ("float16", "bfloat16"):
            data.update({k: "float32" for k in ("dtype", "torch_dtype") if k in data})
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_pipeline_atomically(pipe, out: str | os.PathLike, files: dict[str, str] | None = None,
                              link_to: list[Path] = ()) -> Path:
    """Save a pipeline (plus small text files) to a temp folder, then swap it in: a killed run
    never leaves half a model, and the previous version is removed only once the new one is in place.
    ``link_to``: pipeline folders next to ``out`` whose identical components become links (``link_shared_parts``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    pipe.save_pretrained(tmp, safe_serialization=True)
    load_in_float32(tmp)
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for path in (tmp, *tmp.rglob("*")):  # mkdtemp (and some writers) make them private; models are meant to be shared
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    link_shared_parts(tmp, [Path(p) for p in link_to if Path(p).resolve() != out.resolve()])
    if out.exists():
        detach_links_into(out)
    return replace_dir(tmp, out)
