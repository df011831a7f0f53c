"""The miniature teacher recipe at toy scale: VAE, teacher, continuation and fp16 export all
produce folders the engine loads, and saves never leave a half-written model."""

import json
from pathlib import Path

import numpy as np
import pytest
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
    # exported again under another name (as teacher-sd4 is), every part it shares with the shipped teacher is a link
    recipe.run(["export"], cpu, tmp_path, tmp_path / "assets", None, None, export_name="teacher-b")
    second = tmp_path / "assets" / "teacher-b"
    assert {p.name for p in second.iterdir() if p.is_symlink()} == {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    assert (second / "unet").readlink().as_posix() == "../teacher/unet"
    assert load_engine(second, device="cpu").generate("a b", seed=1, output_type="np").images.shape == (1, 64, 64, 3)


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


def test_sd4_layout_block_removal_is_sdxs512s_own(tmp_path):
    """The sd4 teacher's block-removed student keeps attention at two resolutions (8x8, 4x4) and one
    layer per stage, with ~37 % of the parameters (as SDXS-512 of SD1.5) and >= 2x fewer FLOPs."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from sdxs_core.architectures import count_params
    from trainers.core.student import block_removed_config, init_from_teacher

    def flops(unet):
        x, context = torch.zeros(1, 4, 16, 16), torch.zeros(1, 77, 128)  # the miniature tokenizer pads to 77
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            unet(x, torch.tensor([999]), encoder_hidden_states=context)
        return counter.get_total_flops()

    torch.manual_seed(0)
    big = UNet2DConditionModel(**teacher.teacher_unet_config(128, "sd4"))
    student = UNet2DConditionModel.from_config(block_removed_config(big.config, 1))
    assert student.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert student.mid_block is None and student.config.layers_per_block == 1
    assert 0.3 < count_params(student) / count_params(big) < 0.45
    assert flops(big) >= 2 * flops(student)
    _, not_copied = init_from_teacher(student, big)
    assert not_copied == []
    shipped = UNet2DConditionModel(**teacher.teacher_unet_config(128))  # sd3: one attention resolution left
    assert UNet2DConditionModel.from_config(block_removed_config(shipped.config, 1)).config.down_block_types == \
        ("DownBlock2D", "CrossAttnDownBlock2D")
    with pytest.raises(ValueError, match="layout"):
        teacher.teacher_unet_config(128, "sd5")


def test_new_teacher_on_another_teachers_text_encoder(tmp_path):
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    teacher.train_vae(tmp_path / "vae", steps=1, batch=4, device=cpu, n_data=8, eval_n=4)
    small = teacher.teacher_unet_config(cross_attention_dim=128) | dict(block_out_channels=(32, 32, 32))
    teacher.train_teacher(tmp_path / "vae", tmp_path / "a", steps=1, batch=4, device=cpu, n_data=8, unet_config=small,
                          text_steps=1)
    stats = teacher.train_teacher(tmp_path / "vae", tmp_path / "b", steps=1, batch=4, device=cpu, n_data=8,
                                  text_from=tmp_path / "a", layout="sd4")
    assert stats["text_encoder"] == {"from": str(tmp_path / "a")}
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        teacher.train_teacher(tmp_path / "vae", tmp_path / "c", steps=1, batch=4, device=cpu, n_data=8, text_from=tmp_path)
    a, b = (load_file(next((tmp_path / d / "text_encoder").glob("*.safetensors"))) for d in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "b" / "unet" / "config.json").read_text())
    assert config["block_out_channels"] == [48, 64, 128, 128] and config["layers_per_block"] == 2
    # the chain's first student stage takes it as it is: block KD of the 4-stage teacher
    from trainers.core.config import load_config
    from trainers.core.loop import train
    from trainers.methods.block_kd import BlockKD

    cfg = load_config(BlockKD.config_cls, None, dict(teacher=str(tmp_path / "b"), run_dir=str(tmp_path / "kd"),
                      x0_source="world", num_images=4, batch_size=2, max_steps=1, num_prompts=4, log_every=1,
                      validate_every=0, kd_weighting="v"))
    method = BlockKD(cfg.validate())
    out = train(cfg, method)
    assert method.not_copied == []
    assert method.block_map == {"down_blocks.0": "down_blocks.0", "down_blocks.1": "down_blocks.1",
                                "up_blocks.1": "up_blocks.0", "up_blocks.2": "up_blocks.1", "up_blocks.3": "up_blocks.2"}
    kd_unet = json.loads((out / "unet" / "config.json").read_text())
    assert kd_unet["block_out_channels"] == [48, 64, 128] and kd_unet["mid_block_type"] is None


SD4 = Path(__file__).resolve().parents[1] / "assets" / "miniature" / "teacher-sd4"


@pytest.mark.skipif(not (SD4 / "unet").is_dir(), reason="assets/miniature/teacher-sd4 missing")
def test_bundled_sd4_teacher_is_the_sd4_layout_on_the_shipped_teachers_text_encoder_and_vae():
    """The SD1.5-layout teacher ships only its U-Net: text encoder, tokenizer and VAE are links to the
    shipped teacher's, which is what ``--text-from`` trained it on; it samples with CFG like any pipeline."""
    sd4, shipped = SD4, SD4.parent / "teacher"
    for part in ("text_encoder", "tokenizer", "vae"):
        assert (sd4 / part).resolve() == (shipped / part).resolve()
    engine = load_engine(sd4, device="cpu")
    want = teacher.teacher_unet_config(engine.text_encoder.config.hidden_size, "sd4")
    assert {k: engine.unet.config[k] for k in want} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in want.items()}
    noise = engine.make_noise([0, 0], 64, 64, generators=[torch.Generator().manual_seed(1)] * 2)
    images = engine.generate(["a red circle on the left on a gray background", "a white square on the right on a blue background"],
                             noise=noise, num_inference_steps=4, guidance_scale=5.0, output_type="np").images
    assert np.isfinite(images).all() and images.shape == (2, 64, 64, 3)
    assert np.abs(images[0] - images[1]).mean() > 0.02  # same noise, other prompt: the text conditions it


STUDENT_SD4 = SD4.parent / "sdxs-sd4"


@pytest.mark.skipif(not (STUDENT_SD4 / "unet").is_dir(), reason="assets/miniature/sdxs-sd4 missing")
def test_bundled_sd4_student_is_the_block_removed_sd4_teacher_and_is_offered_only_its_own_add_ons():
    """The ``miniature-sd4`` preset: one step, the sd4 teacher's block-removed U-Net on the shipped teacher's
    text encoder and VAE (links); each student's ControlNets and LoRA were distilled for it alone, so the app
    offers each only its own."""
    from diffusers import UNet2DConditionModel

    from sdxs_core.hub import ModelHub
    from trainers.core.student import block_removed_config

    engine = load_engine("miniature-sd4", device="cpu")
    want = block_removed_config(UNet2DConditionModel.load_config(SD4 / "unet"), 1)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "mid_block_type"):
        assert list(np.atleast_1d(engine.unet.config[key])) == list(np.atleast_1d(want[key])), key
    assert list(engine.unet.config.block_out_channels) == [48, 64, 128]
    for part in ("text_encoder", "tokenizer", "vae"):
        assert (STUDENT_SD4 / part).resolve() == (SD4.parent / "teacher" / part).resolve()
    image = engine.generate(["a red circle on the left on a gray background"], seed=0, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0.02
    hub = ModelHub(search_dirs=[SD4.parent.parent])
    offered, loras = {}, {}
    for model in ("miniature", "miniature-sd4"):
        hub.load_model(model)
        offered[model] = {key for _, key in hub.choices("controlnet") if "miniature/controlnet-" in key}
        loras[model] = {key for _, key in hub.choices("lora") if "miniature/lora-" in key}
    assert offered == {"miniature": {"assets/miniature/controlnet-edges", "assets/miniature/controlnet-depth"},
                       "miniature-sd4": {"assets/miniature/controlnet-edges-sd4", "assets/miniature/controlnet-depth-sd4"}}
    # each student is offered its own distilled style LoRA, never the other's
    assert loras == {"miniature": {"assets/miniature/lora-pastel/pytorch_lora_weights.safetensors"},
                     "miniature-sd4": {"assets/miniature/lora-pastel-sd4/pytorch_lora_weights.safetensors"}}
    assert "LoRA **assets/miniature/lora-pastel-sd4" in hub.set_lora(
        "assets/miniature/lora-pastel-sd4/pytorch_lora_weights.safetensors")


FAST_SD4 = SD4.parent / "sdxs-sd4-fast"


@pytest.mark.skipif(not (FAST_SD4 / "vae").is_dir(), reason="assets/miniature/sdxs-sd4-fast missing")
def test_fast_sd4_student_is_the_same_unet_with_its_tiny_decoder():
    """``miniature-sd4-fast`` stores only its tiny decoder: the U-Net and text parts are links, so it draws
    what ``miniature-sd4`` draws, decoded by the TAESD-family decoder trained on this student's latents."""
    from diffusers import AutoencoderTiny

    assert (FAST_SD4 / "unet").resolve() == (STUDENT_SD4 / "unet").resolve() and not (FAST_SD4 / "vae").is_symlink()
    fast, full = load_engine("miniature-sd4-fast", device="cpu"), load_engine("miniature-sd4", device="cpu")
    assert isinstance(fast.vae, AutoencoderTiny)
    prompt = ["a red circle on the left on a gray background"]
    a = fast.generate(prompt, seed=0, output_type="np").images
    b = full.generate(prompt, seed=0, output_type="np").images
    assert a.shape == b.shape == (1, 64, 64, 3)
    assert np.abs(a - b).mean() < 0.08  # the same picture through another decoder, not another picture


@pytest.mark.skipif(not (FAST_SD4 / "vae").is_dir(), reason="assets/miniature/sdxs-sd4-fast missing")
def test_the_app_opens_on_the_sd4_student_with_its_own_edges_controlnet():
    """``python app.py`` on a fresh clone: the SSD student with its tiny decoder, and the edges ControlNet
    distilled for it (the Live tab opens on canny), not the first student's."""
    from sdxs_core.hub import ModelHub

    hub = ModelHub(search_dirs=[SD4.parent.parent], device="cpu")
    hub.start(hub.default_model())
    assert hub.model_key == "miniature-sd4-fast"
    assert hub.controlnet_key == "assets/miniature/controlnet-edges-sd4"


TEACHER_LORA = SD4.parent / "lora-pastel-teacher-sd4" / "pytorch_lora_weights.safetensors"


@pytest.mark.skipif(not TEACHER_LORA.is_file() or not (SD4 / "unet").is_dir(), reason="the sd4 teacher's LoRA missing")
def test_bundled_teacher_style_lora_makes_the_sd4_teacher_pastel_and_fits_no_student():
    """LoRA-SSD's input ships, so the student's LoRA can be remade from the assets alone: the teacher with
    it draws what the evaluator reads as pastel, without it plain; the one-step students refuse it."""
    from sdxs_core.fits import lora_fits
    from trainers.miniature import world
    from trainers.miniature.classifier import load_classifier, predict_attributes

    engine = load_engine(SD4, device="cpu")
    assert lora_fits(engine.unet, str(TEACHER_LORA))
    assert not lora_fits(load_engine("miniature-sd4", device="cpu").unet, str(TEACHER_LORA))
    prompts, classifier = world.eval_prompts(8), load_classifier()

    def pastel_share():
        images = engine.generate(prompts, seed=list(range(8)), num_inference_steps=10, guidance_scale=5.0,
                                 output_type="np").images
        return np.mean([p.style == "pastel" for p in predict_attributes(classifier, (images * 255).round().astype(np.uint8))])

    assert pastel_share() == 0
    engine.load_lora(TEACHER_LORA)
    assert pastel_share() >= 0.75
