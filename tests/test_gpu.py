"""The GPU paths are guarded: where they do not apply (no CUDA here, a CPU engine, another backend) they
change nothing and say why, so the app and benchmarks can always call them."""

import numpy as np
import pytest
import torch

from sdxs_core.gpu import accelerate, cuda_ready


def test_accelerate_falls_back_cleanly_without_cuda(engine):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/gpu_check.sh checks the compiled paths there")
    before = engine.generate("a b", seed=1, output_type="np").images
    forward = engine.unet.forward
    message = accelerate(engine)
    assert message.startswith("GPU compile skipped") and "CUDA" in message
    assert engine.unet.forward == forward  # nothing was compiled or moved
    assert np.array_equal(engine.generate("a b", seed=1, output_type="np").images, before)
    assert "CUDA" in cuda_ready(engine)


def test_accelerate_refuses_an_unknown_mode(engine):
    with pytest.raises(ValueError, match="mode='fast'"):
        accelerate(engine, mode="fast")
