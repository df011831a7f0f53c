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


def test_the_hub_compiles_at_load_only_where_it_can_and_says_so(tiny_dir, tiny_controlnet_dir, tmp_path):
    """``ModelHub(compile=...)`` (``app.py --compile``): on this CUDA-less machine every load and
    ControlNet switch says the compile was skipped and why, and the engine runs as before."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: scripts/gpu_check.sh checks the compiled paths there")
    from sdxs_core.hub import ModelHub

    with pytest.raises(ValueError, match="compile='fast'"):
        ModelHub(search_dirs=[], device="cpu", compile="fast")
    hub = ModelHub(search_dirs=[], device="cpu", outputs=tmp_path, compile="reduce-overhead")
    notice = hub.start(str(tiny_dir), controlnet=str(tiny_controlnet_dir))
    assert notice.count("GPU compile skipped: no CUDA device") == 2, notice  # the model, then the ControlNet
    assert hub.engine is not None and hub.engine.controlnet is not None
    assert len(hub.engine.generate("a b", seed=1, output_type="np").images) == 1
