"""``benchmarks.sdxs512.write``: the folders it writes load like downloaded ones (here with the tiny
networks in place of SDXS-512's, which take 2 GB): a one-step pipeline and a ControlNet that fits it,
known as a sketch ControlNet."""

import numpy as np


def test_written_folders_load_as_a_model_and_its_sketch_controlnet(tmp_path, monkeypatch):
    from benchmarks import sdxs512
    from sdxs_core import load_engine
    from sdxs_core.catalogue import control_type_of
    from sdxs_core.testkit import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    monkeypatch.setattr(sdxs512, "random_sdxs512_components", lambda: {
        k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "unet", "vae", "scheduler")})
    pipe_dir, cn_dir = sdxs512.write(tmp_path)
    assert control_type_of(cn_dir) == "sketch"
    engine = load_engine(pipe_dir, controlnet=cn_dir, device="cpu", backend="torch")
    strokes = np.zeros((64, 64, 3), np.uint8)
    strokes[20:24, 8:56] = 255
    out = engine.generate("a house", seed=0, control_image=strokes, output_type="np", height=64, width=64)
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    mtime = (pipe_dir / "model_index.json").stat().st_mtime_ns
    assert sdxs512.write(tmp_path) == (pipe_dir, cn_dir)  # written once: a second call keeps the folders
    assert (pipe_dir / "model_index.json").stat().st_mtime_ns == mtime
