"""Atomic writes: a reader (or a restart after a kill) never sees half a file or half a folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes files private; results, configs and weights are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def replace_dir(staged: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move a fully written folder ``staged`` to ``out``, replacing any old one with two renames.

    The old folder is renamed aside first and removed last, so at every instant ``out`` is either the
    complete old folder or the complete new one (never a mixture, never missing for longer than a rename).
    """
    staged, out = Path(staged), Path(out)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
