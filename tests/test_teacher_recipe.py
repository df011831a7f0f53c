"""The miniature teacher recipe at toy scale: VAE, teacher, continuation and fp16 export all
produce folders the engine loads, and saves never leave a half-written model."""

import json

import numpy as np
import torch

from sdxs_core import load_engine
from trainers.miniature import recipe, teacher


def test_vae_teacher_continue_and_export(tmp_path):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    vae_stats = teacher.train_vae(tmp_path / "vae", steps=2, batch=4, device=cpu, n_data=16, eval_n=8)
    assert vae_stats["steps"] == 2 and vae_stats["scaling_factor"] > 0
    small = teacher.teacher_unet_config(cross_attention_dim=128) | dict(block_out_channels=(32, 32, 32), layers_per_block=1)
    first = teacher.train_teacher(tmp_path / "vae", tmp_path / "teacher", steps=2, batch=4, device=cpu, n_data=16,
                                  unet_config=small)
    assert first["steps"] == 2 and np.isfinite(first["final_loss"])
    more = teacher.train_teacher(tmp_path / "vae", tmp_path / "teacher2", steps=1, batch=4, device=cpu, n_data=16,
                                 init=tmp_path / "teacher")
    assert [h["steps"] for h in more["history"]] == [2, 1]  # the continuation records both segments
    assert not list(tmp_path.glob(".teacher*"))  # no temp or old folders left behind

    recipe.export_fp16(tmp_path / "teacher2", tmp_path / "shipped")
    index = json.loads((tmp_path / "shipped" / "train_stats.json").read_text())
    assert index["history"] == more["history"]
    full = load_engine(tmp_path / "teacher2", device="cpu")
    half = load_engine(tmp_path / "shipped", device="cpu")
    assert half.dtype == torch.float32  # fp16 files are upcast for the CPU
    a = full.generate("a red circle in the center on a black background", seed=1, output_type="np").images
    b = half.generate("a red circle in the center on a black background", seed=1, output_type="np").images
    assert a.shape == (1, 64, 64, 3) and np.abs(a - b).max() < 0.05
    # the shipped fp16 folder is a valid starting point: training continues in fp32
    again = teacher.train_teacher(tmp_path / "shipped" / "vae", tmp_path / "teacher3", steps=1, batch=4, device=cpu,
                                  n_data=8, init=tmp_path / "shipped")
    assert np.isfinite(again["final_loss"]) and len(again["history"]) == 3
