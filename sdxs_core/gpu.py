"""GPU speed-ups for the one-step path: fp16, channels-last, ``torch.compile`` and CUDA graphs.

Why: at batch 1 a one-step model on a GPU spends most of its time launching kernels, not in them;
``torch.compile`` fuses the small ops and CUDA graphs (``mode="reduce-overhead"``) replay the whole
launch sequence at once. Both need static shapes, so ``accelerate`` compiles for one size and batch
and warms the graphs up at load (the first calls record them: seconds to minutes), with a message.

Everything here is guarded: on a CPU, without CUDA, or where compiling fails, the engine is left
as it was and the returned message says why; the caller never needs to check first.
"""

from __future__ import annotations

import time

import numpy as np
import torch

MODES = ("reduce-overhead", "max-autotune", "default")  # reduce-overhead = torch.compile + CUDA graphs


def cuda_ready(engine) -> str | None:
    """None when ``accelerate`` applies to ``engine``, else the reason it does not."""
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if engine.device.type != "cuda":
        return f"the engine runs on {engine.device}, not CUDA"
    if engine.backend is not None:
        return f"the engine runs on the {engine.backend.label} backend"
    return None


def accelerate(engine, height: int | None = None, width: int | None = None, batch: int = 1,
               mode: str = "reduce-overhead", channels_last: bool = True, warmup: int = 3) -> str:
    """Compile the engine's U-Net, ControlNet and decoder in place for one shape and warm them up
    (with a ControlNet attached, with and without a control image: two U-Net graphs). Returns a
    message for the user: what was done and what it cost, or why nothing was done."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)}")
    reason = cuda_ready(engine)
    if reason is not None:
        return f"GPU compile skipped: {reason}; running as before"
    start = time.perf_counter()
    networks = [engine.unet, engine.vae.decoder] + ([engine.controlnet] if engine.controlnet is not None else [])
    originals = [net.forward for net in networks]
    try:
        for net in networks:
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if not getattr(net.forward, "_sdxs_compiled", False):
                compiled = torch.compile(net.forward, mode=mode, fullgraph=False, dynamic=False)
                compiled._sdxs_compiled = True
                net.forward = compiled
        h, w = height or engine.default_size, width or engine.default_size
        controls = [None] if engine.controlnet is None else [None, np.zeros((h, w, 3), np.uint8)]
        for i in range(warmup):
            for control in controls:
                engine.generate("warm-up", seed=i, num_images=batch, height=h, width=w, output_type="pt",
                                control_image=control)
        torch.cuda.synchronize(engine.device)
    except Exception as e:  # a model the compiler cannot take still runs, eagerly
        for net, forward in zip(networks, originals):
            net.forward = forward
        return f"GPU compile failed ({type(e).__name__}: {e}); running eagerly"
    return (f"GPU: {', '.join(type(n).__name__ for n in networks)} compiled ({mode}"
            f"{', channels-last' if channels_last else ''}) for batch {batch} at {h}x{w} "
            f"in {time.perf_counter() - start:.1f} s")
