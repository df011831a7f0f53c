"""Device and dtype policy: CUDA + fp16 where available, otherwise CPU + fp32 (fp16 matmuls on a
CPU are slow and bf16 is unsupported on many CPUs); both overridable."""

import torch

from .errors import InvalidInputError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError("Device", f"{device!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("Device", f"device {str(device)!r} requested but CUDA is not available on this "
                                f"machine; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError("Device", f"{str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                                f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InvalidInputError("Device", f"{str(device)!r} is not supported: use cpu or cuda")
    return device


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidInputError("Dtype", f"unknown dtype {dtype!r}; choose one of {sorted(set(_DTYPES))}")
    return _DTYPES[dtype]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock stage timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serving_threads() -> int:
    """Torch CPU threads for serving: every core but one. The spare core runs the web server's
    request handling and image coding, which otherwise wait behind the model's threads; on a 2-core
    machine that is worth more frames per second than a second model thread (``benchmarks/live_loop.py``)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)
