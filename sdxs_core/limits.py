"""Bounds on what users can make the server hold: upload sizes, image sides, and the files the app
writes for its pages (generated images in Gradio's cache).

Why: a public app gets junk uploads (64 MiB files, PNG headers that claim 60000x60000) and makes
a file for every image it returns; Gradio's ``delete_cache`` only removes the files of sessions it
tracked, so images made through the API stayed for good. ``CacheJanitor`` keeps the app's private
cache folder under a file count and a size whatever made the files.
"""

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import SDXSError

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 16  # per file, the app without its Train tab (images, control frames, sketches)
TRAIN_UPLOAD_MB = 512  # with the Train tab: LoRA files and dataset archives (its own per-file limits apply)
MAX_IMAGE_SIDE = 4096  # px, any image a request hands the app


class ImageLimitError(SDXSError, ValueError):
    """An image over the size limits; the message names the field and the limit."""


def guard_decoders(max_side: int = MAX_IMAGE_SIDE) -> None:
    """Make PIL refuse images over ``max_side`` squared pixels (twice that raises, which is how PIL
    treats a decompression bomb) before it allocates them: uploads are decoded by Gradio before any
    handler of ours sees them."""
    Image.MAX_IMAGE_PIXELS = max_side * max_side


def check_image(image, field: str, max_side: int = MAX_IMAGE_SIDE):
    """``image`` (a numpy array, a PIL image, or a path read header-only) when each side is at most
    ``max_side``; else ``ImageLimitError`` naming ``field``. ``None`` passes through."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as probe:
                w, h = probe.size
        except Image.DecompressionBombError:
            raise ImageLimitError(f"{field}: the image is larger than {max_side}x{max_side} px") from None
    elif isinstance(image, Image.Image):
        w, h = image.size
    elif isinstance(image, np.ndarray):
        h, w = image.shape[:2] if image.ndim >= 2 else (0, 0)
    else:
        return image
    if max(w, h) > max_side:
        raise ImageLimitError(f"{field}: the image is {w}x{h} px; at most {max_side} px a side")
    return image


@dataclass
class CacheJanitor:
    """Keeps ``folder`` under ``max_files`` files and ``max_mb`` MB, deleting the oldest first, but
    never a file younger than ``min_age_s`` (a page may still be fetching it). ``start()`` sweeps
    every ``every_s`` seconds in a daemon thread."""

    folder: Path
    max_files: int = 400
    max_mb: float = 256.0
    min_age_s: float = 10.0
    every_s: float = 5.0

    def __post_init__(self):
        self.folder = Path(self.folder)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.deleted = 0

    def files(self) -> list[tuple[float, int, Path]]:
        """``(mtime, size, path)`` of every file under the folder, oldest first."""
        found = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                path = Path(root) / name
                try:
                    st = path.stat()
                except OSError:  # deleted meanwhile
                    continue
                found.append((st.st_mtime, st.st_size, path))
        return sorted(found)

    def sweep(self, now: float | None = None) -> int:
        """Delete the oldest files over the bounds; returns how many were deleted."""
        now = time.time() if now is None else now
        files = self.files()
        count, total = len(files), sum(size for _, size, _ in files)
        deleted, emptied = 0, set()
        for mtime, size, path in files:
            if count <= self.max_files and total <= self.max_mb * 2**20:
                break
            if now - mtime < self.min_age_s:
                break  # the rest are younger still
            try:
                path.unlink()
            except OSError:
                continue
            emptied.add(str(path.parent))
            count, total, deleted = count - 1, total - size, deleted + 1
        for root, dirs, names in os.walk(self.folder, topdown=False):  # Gradio makes a folder per file
            if root != str(self.folder) and not dirs and not names:
                try:
                    # a fresh empty folder is one Gradio has just made and is about to write into
                    if root in emptied or time.time() - os.stat(root).st_mtime >= self.min_age_s:
                        os.rmdir(root)
                except OSError:
                    pass
        self.deleted += deleted
        return deleted

    def start(self) -> "CacheJanitor":
        def loop():
            while not self._stop.wait(self.every_s):
                try:
                    self.sweep()
                    release_freed_memory()
                except Exception:  # a janitor must never take the app down
                    log.exception("cache sweep of %s failed", self.folder)

        self._thread = threading.Thread(target=loop, name="sdxs-cache-janitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def release_freed_memory() -> bool:
    """Hand memory that Python and torch have freed back to the OS (glibc's ``malloc_trim``).
    Many request threads with images of changing batch sizes leave glibc's arenas holding freed
    blocks, so a long-running server's RSS creeps up without a leak; False where there is no glibc."""
    libc = _libc()
    try:
        return bool(libc and libc.malloc_trim(0))
    except AttributeError:  # a C library without malloc_trim (musl)
        return False


MALLOC_ARENAS = 2  # glibc malloc arenas for a serving process (see limit_malloc_arenas)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` does), before the server's threads start.
    glibc gives each contending thread an arena of its own, up to eight per core; a request thread
    pool handing out images of changing batch sizes leaves every arena holding fragments that
    ``malloc_trim`` cannot return, and a long-running app's RSS creeps up (benchmarks.soak). Two
    arenas cost nothing measurable here: the arithmetic runs in torch's own threads. False where
    there is no glibc."""
    libc = _libc()
    try:
        return bool(libc and libc.mallopt(-8, arenas))  # -8: M_ARENA_MAX in <malloc.h>
    except AttributeError:
        return False


@functools.cache
def _libc():
    """The C library, looked up once (``find_library`` runs a subprocess)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def private_cache_dir(prefix: str = "sdxs-gradio-") -> Path:
    """A fresh folder for Gradio's uploads and generated files (``GRADIO_TEMP_DIR``), so the
    janitor sweeps only this app's files; removed when the process exits."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
