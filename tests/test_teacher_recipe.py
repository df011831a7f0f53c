"""The miniature teacher recipe at toy scale: VAE, teacher, continuation and fp16 export all
produce folders the engine loads, and saves never leave a half-written model."""

import json

import numpy as np
import torch
from safetensors.torch import load_file

from sdxs_core import load_engine
from trainers.miniature import recipe, teacher


def test_vae_teacher_continue_and_export(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    vae_stats = teacher.train_vae(tmp_path / "vae", steps=2, batch=4, device=cpu, n_data=16, eval_n=8)
    assert vae_stats["steps"] == 2 and vae_stats["scaling_factor"] > 0
    small = teacher.teacher_unet_config(cross_attention_dim=128) | dict(block_out_channels=(32, 32, 32), layers_per_block=1)
    first = teacher.train_teacher(tmp_path / "vae", tmp_path / "teacher", steps=2, batch=4, device=cpu, n_data=16,
                                  unet_config=small, text_steps=2)
    assert first["steps"] == 2 and np.isfinite(first["final_loss"]) and first["text_encoder"]["steps"] == 2
    more = teacher.train_teacher(tmp_path / "vae", tmp_path / "teacher2", steps=1, batch=4, device=cpu, n_data=16,
                                 init=tmp_path / "teacher")
    assert [h["steps"] for h in more["history"]] == [2, 1]  # the continuation records both segments
    assert more["text_encoder"] == first["text_encoder"]
    # the text encoder is frozen while the U-Net trains: the continuation changed only the U-Net
    before, after = (load_file(next((tmp_path / d / "text_encoder").glob("*.safetensors"))) for d in ("teacher", "teacher2"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    unet_before, unet_after = (load_file(next((tmp_path / d / "unet").glob("*.safetensors"))) for d in ("teacher", "teacher2"))
    assert any(not torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
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

    # the recipe's continue stage trains work/teacher further; export then ships the continued one
    monkeypatch.setitem(recipe.SHIPPED, "continue", dict(steps=1, batch=4, n_data=16, lr=3e-4))
    recipe.run(["continue", "export"], cpu, tmp_path, tmp_path / "assets", None, None)
    continued = json.loads((tmp_path / "teacher-continued" / "train_stats.json").read_text())
    shipped = json.loads((tmp_path / "assets" / "teacher" / "train_stats.json").read_text())
    assert [h["steps"] for h in continued["history"]] == [2, 1] and shipped["history"] == continued["history"]


def test_text_pretraining_teaches_the_encoder_to_read_held_out_captions():
    from transformers import CLIPTextModel

    from trainers.miniature import text

    torch.manual_seed(0)
    tokenizer = text.load_tokenizer()
    config = text.build_text_encoder_config(tokenizer, hidden_size=64, num_hidden_layers=1, intermediate_size=128,
                                            num_attention_heads=2)
    untrained = text.pretrain_text_encoder(CLIPTextModel(config), tokenizer, steps=0)
    trained = text.pretrain_text_encoder(CLIPTextModel(config), tokenizer, steps=150, batch=64, lr=3e-3)
    assert untrained["heldout_caption_accuracy"] < 0.02  # every attribute right by chance: ~never
    assert trained["heldout_caption_accuracy"] > 0.3, trained
