"""What a remote client may train on: files it uploaded, or folders under the operator's data root.

A client never names a path. Uploads are copied into a fresh folder under ``<jobs root>/uploads``
(count- and size-limited, images and their ``NAME.txt`` captions or one LoRA file); a data-root
folder is picked by its name from the list the server itself offers (``data_folders``), and a
name not on that list is refused without touching the filesystem.
"""

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from trainers.core.image_folder import IMAGE_SUFFIXES
from trainers.jobs.plan import JobError

CAPTION_SUFFIX = ".txt"
LORA_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 300
    max_file_mb: float = 20.0
    max_total_mb: float = 300.0


LORA_LIMITS = UploadLimits(max_files=1, max_file_mb=512.0, max_total_mb=512.0)  # a rank-128 SD LoRA is ~300 MB


def _copy_checked(files: list[str | Path], dest: Path, suffixes: tuple[str, ...], what: str,
                  limits: UploadLimits) -> list[Path]:
    files = [Path(f) for f in files or []]
    if not files:
        raise JobError(f"{what}: nothing uploaded")
    if len(files) > limits.max_files:
        raise JobError(f"{what}: {len(files)} files uploaded; at most {limits.max_files}")
    total = 0.0
    for f in files:
        if f.suffix.lower() not in suffixes:
            raise JobError(f"{what}: {f.name!r} is not one of {', '.join(suffixes)}")
        size = f.stat().st_size / 2**20
        if size > limits.max_file_mb:
            raise JobError(f"{what}: {f.name!r} is {size:.1f} MB; at most {limits.max_file_mb:g} MB a file")
        total += size
    if total > limits.max_total_mb:
        raise JobError(f"{what}: {total:.0f} MB uploaded; at most {limits.max_total_mb:g} MB in all")
    dest.mkdir(parents=True)
    copied = []
    for f in files:
        target = dest / Path(f.name).name.lstrip(".")
        shutil.copyfile(f, target)
        copied.append(target)
    return copied


def save_image_uploads(files, uploads: Path, limits: UploadLimits = UploadLimits()) -> Path:
    """Uploaded images (and ``NAME.txt`` captions) -> a new folder under ``uploads``; returns it."""
    dest = Path(uploads) / secrets.token_hex(8)
    copied = _copy_checked(files, dest, (*IMAGE_SUFFIXES, CAPTION_SUFFIX), "images", limits)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in copied):
        shutil.rmtree(dest, ignore_errors=True)
        raise JobError("images: only captions were uploaded, no image")
    return dest


def save_lora_upload(file, uploads: Path, limits: UploadLimits = LORA_LIMITS) -> Path:
    """One uploaded LoRA file (safetensors only: nothing is ever unpickled) -> its saved path."""
    dest = Path(uploads) / secrets.token_hex(8)
    return _copy_checked([file], dest, LORA_SUFFIXES, "LoRA file", limits)[0]


def data_folders(data_root: Path | None, depth: int = 2) -> list[str]:
    """Folders under ``data_root`` that hold images, as names relative to it (what the form offers)."""
    if data_root is None or not Path(data_root).is_dir():
        return []
    root = Path(data_root).resolve()
    found = []

    def walk(folder: Path, level: int):
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or not child.is_dir() or child.is_symlink():
                continue
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in child.iterdir() if p.is_file()):
                found.append(child.relative_to(root).as_posix())
            if level < depth:
                walk(child, level + 1)

    walk(root, 1)
    return found


def resolve_data_folder(data_root: Path | None, name: str) -> Path:
    """The folder ``name`` stands for, only if it is one ``data_folders`` offers."""
    if name not in data_folders(data_root):
        raise JobError(f"images: {name!r} is not one of the folders under the data root this server offers")
    return Path(data_root).resolve() / name
