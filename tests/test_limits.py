"""Upload and image limits, and the cache janitor that keeps generated files from piling up."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_core import limits
from sdxs_core.limits import CacheJanitor, ImageLimitError, check_image


def bomb_png(path, side=60000):
    """A tiny PNG whose header claims ``side`` x ``side`` pixels."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", side, side)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_images_over_the_side_limit_are_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after guard_decoders
    assert check_image(np.zeros((64, 4096, 3), np.uint8), "Frame") is not None
    with pytest.raises(ImageLimitError, match=r"Frame: the image is 4097x2 px; at most 4096 px a side"):
        check_image(np.zeros((2, 4097, 3), np.uint8), "Frame")
    with pytest.raises(ImageLimitError, match="Control image"):
        check_image(Image.new("L", (10, 5000)), "Control image")
    limits.guard_decoders()
    with pytest.raises(ImageLimitError, match="Upload: the image is larger than 4096x4096"):
        check_image(bomb_png(tmp_path / "bomb.png"), "Upload")  # header only: nothing decoded
    with pytest.raises(Image.DecompressionBombError):  # what Gradio's own decode now meets
        Image.open(bomb_png(tmp_path / "bomb2.png"))
    assert check_image(None, "Frame") is None


def test_upload_limit_is_small_without_the_train_tab():
    import app

    assert app.launch_options(_Hub())["max_file_size"] == f"{limits.MAX_UPLOAD_MB}mb"
    assert app.launch_options(_Hub(), train=True)["max_file_size"] == f"{limits.TRAIN_UPLOAD_MB}mb"
    assert limits.MAX_UPLOAD_MB <= 16


class _Hub:
    engine = None


def _make(folder, name, age_s, size=1000, now=1e9):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_janitor_keeps_the_cache_under_its_bounds_oldest_first(tmp_path):
    now = 1e9
    for i in range(30):  # one folder per file, as Gradio writes them
        _make(tmp_path, f"h{i:02d}/image.png", age_s=1000 - i, now=now)
    fresh = [_make(tmp_path, f"new{i}/image.png", age_s=1, now=now) for i in range(5)]
    janitor = CacheJanitor(tmp_path, max_files=10, max_mb=1.0, min_age_s=30)
    assert janitor.sweep(now=now) == 25
    left = sorted(p.relative_to(tmp_path).parts[0] for _, _, p in janitor.files())
    assert left == [f"h{i:02d}" for i in range(25, 30)] + [f"new{i}" for i in range(5)]  # newest kept
    assert not (tmp_path / "h00").exists()  # emptied folders go too
    many = [_make(tmp_path, f"burst{i}/image.png", age_s=2, now=now) for i in range(20)]
    janitor.sweep(now=now)
    assert all(p.exists() for p in many + fresh)  # young files stay, even over the bound
    _make(tmp_path, "big/file.bin", age_s=500, size=2 * 2**20, now=now)
    janitor.sweep(now=now)
    assert not (tmp_path / "big").exists()  # over the size bound


def test_janitor_leaves_a_folder_gradio_has_just_made(tmp_path):
    """Gradio makes a hash folder, then writes the image into it: removing the empty folder in
    between made a generation fail in the 30-minute soak (FileNotFoundError)."""
    import time

    (tmp_path / "fresh").mkdir()
    old = tmp_path / "old"
    old.mkdir()
    os.utime(old, (time.time() - 100, time.time() - 100))
    CacheJanitor(tmp_path, max_files=10, min_age_s=30).sweep()
    assert (tmp_path / "fresh").is_dir() and not old.exists()


def test_janitor_thread_sweeps_and_stops(tmp_path):
    import time

    for i in range(5):
        _make(tmp_path, f"f{i}", age_s=100, now=time.time())
    janitor = CacheJanitor(tmp_path, max_files=2, min_age_s=0, every_s=0.05).start()
    deadline = time.monotonic() + 30
    while len(janitor.files()) > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    janitor.stop()
    assert len(janitor.files()) == 2


def test_freed_memory_goes_back_to_the_os():
    """A freed 200 MB buffer stops counting in RSS once trimmed (glibc only)."""
    import ctypes.util

    if not ctypes.util.find_library("c"):
        pytest.skip("no C library to trim")
    limits.release_freed_memory()
    blocks = [bytearray(64 * 1024) for _ in range(3200)]  # small blocks: malloc keeps them, not mmap
    before = _rss_mb()
    del blocks[:-1]  # the last one pins the heap's top, so only trimming returns the rest
    assert limits.release_freed_memory() in (True, False)
    assert _rss_mb() < before - 100


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc")


ARENAS = """
import ctypes, ctypes.util, sys, tempfile, threading
from sdxs_core import limits
if sys.argv[1] == "capped":
    limits.limit_malloc_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
barrier = threading.Barrier(12)
def work():  # all alive at once: an exiting thread's arena would be handed to the next one
    held = [bytearray(4096) for _ in range(64)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads: t.start()
for t in threads: t.join()
path = tempfile.mktemp()
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(limits._libc() is None or not hasattr(limits._libc(), "mallopt"), reason="no glibc")
def test_malloc_arenas_are_capped_for_a_threaded_server():
    """Each new thread would get a malloc arena of its own (up to 8 per core); capped, they share two."""
    import subprocess
    import sys

    def heaps(mode):
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True,
                             cwd=Path(limits.__file__).parent.parent)
        return int(out.stdout.strip())

    assert heaps("capped") <= 2 < heaps("free")
