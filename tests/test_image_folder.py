"""A folder of user images as teacher-side training data (``trainers.core.image_folder``): how images
are read and captioned, every refusal naming its field or file, the VAE encoding ``world_data`` shares,
and ``lora_teacher`` / ``controlnet_teacher`` trained for two steps on a folder on the tiny teacher."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.core.image_folder import encode_latents, read_image_folder

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def bands(size, colours, vertical=False) -> Image.Image:
    """An RGB image of equal bands, left to right (top to bottom with ``vertical``)."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    n = len(colours)
    for k, c in enumerate(colours):
        if vertical:
            a[k * h // n:(k + 1) * h // n] = c
        else:
            a[:, k * w // n:(k + 1) * w // n] = c
    return Image.fromarray(a)


def scenes(folder, n=8, size=(80, 64), seed=0):
    """``n`` small PNGs: a coloured rectangle on a coloured ground, so every extractor finds lines."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.full((size[1], size[0], 3), rng.integers(0, 256, 3), np.uint8)
        x, y = rng.integers(8, 30, 2)
        a[y:y + 24, x:x + 28] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
    return folder


# ---- reading ----------------------------------------------------------------------------------------
def test_read_folder_crops_turns_flattens_and_captions(tmp_path):
    bands((30, 10), [RED, GREEN, BLUE]).save(tmp_path / "a.png")  # centre crop: the green third
    exif = Image.Exif()
    exif[0x0112] = 6  # stored top red / bottom blue, shown turned 90 degrees clockwise: left blue, right red
    bands((10, 20), [RED, BLUE], vertical=True).save(tmp_path / "b.jpg", quality=100, exif=exif)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:] = (255, 0, 0, 255)  # left half fully transparent (black underneath), right half red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    (tmp_path / "c.txt").write_text("  my own caption \n")
    bands((8, 8), [GREEN]).save(tmp_path / "D.PNG")  # suffixes in any case
    (tmp_path / "D.txt").write_text("  \n")  # empty: the template
    bands((8, 8), [GREEN]).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "sub").mkdir()
    bands((8, 8), [GREEN]).save(tmp_path / "sub" / "nested.png")

    data = read_image_folder(tmp_path, 4, caption_template="a picture in {trigger} style", trigger="zxq")
    assert data["names"] == ["D.PNG", "a.png", "b.jpg", "c.png"]
    assert data["images"].shape == (4, 4, 4, 3) and data["images"].dtype == np.uint8
    assert (data["images"][1] == GREEN).all()
    turned = data["images"][2].astype(int)
    assert np.abs(turned[:, 0] - BLUE).max() < 40 and np.abs(turned[:, -1] - RED).max() < 40
    assert (data["images"][3][:, :2] == WHITE).all() and (data["images"][3][:, 2:] == RED).all()
    assert data["captions"] == ["a picture in zxq style", "a picture in zxq style", "a picture in zxq style",
                                "my own caption"]
    assert read_image_folder(tmp_path, 16, max_images=2)["names"] == ["D.PNG", "a.png"]  # enlarged too
    assert read_image_folder(tmp_path, 16)["captions"][0] == ""  # the default template: the (empty) trigger


def test_classifier_captions_read_world_images_back_into_scenes(tmp_path):
    from trainers.miniature import world
    from trainers.miniature.classifier import caption_correct

    real = world.render_batch(3, 4, style="pastel")
    for i, im in enumerate(real["images"]):
        Image.fromarray(im).save(tmp_path / f"r{i}.png")
    (tmp_path / "r3.txt").write_text("its own words")
    data = read_image_folder(tmp_path, 32, caption_template="{trigger}, {caption}", trigger="zxq",
                             caption_with="classifier")
    assert data["captions"][3] == "its own words"
    for caption, truth in zip(data["captions"][:3], real["captions"]):
        assert caption.startswith("zxq, ") and caption_correct(world.parse_caption(caption[5:]), truth)


def test_read_folder_refusals_name_the_field_or_file(tmp_path, monkeypatch):
    def refused(match, folder=tmp_path, resolution=8, **kw):
        with pytest.raises(ValueError, match=match) as e:
            read_image_folder(folder, resolution, **kw)
        assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)  # no chain

    refused("does not exist", folder=tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    refused("is not a folder", folder=tmp_path / "file.txt")
    refused("holds no images")
    refused("resolution=0", resolution=0)
    bands((8, 8), [GREEN]).save(tmp_path / "good.png")
    refused("caption_with='magic'", caption_with="magic")
    refused(r"caption_template=.*\{style\}", caption_template="{trigger} {style}")
    refused(r"\{caption\}, which only caption_with='classifier'", caption_template="{trigger}, {caption}")
    refused("caption_template=", caption_template="{trigger")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    refused("broken.jpg: unreadable or corrupt")
    (tmp_path / "broken.jpg").unlink()
    bands((40, 40), [GREEN]).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels > 2 x 100: PIL refuses it
    refused("huge.png: refused as a possible decompression bomb")


def test_configs_check_the_folder_options_up_front(tmp_path, tiny_dir, monkeypatch):
    from trainers.core.config import load_config
    from trainers.methods.controlnet_teacher import ControlNetTeacherConfig
    from trainers.methods.lora_teacher import LoRATeacherConfig

    def errors(cls, **kw):
        return "\n".join(load_config(cls, None, {"teacher": str(tiny_dir), **kw}).errors())

    assert errors(LoRATeacherConfig, images=str(tmp_path)) == ""
    assert "images=" in errors(LoRATeacherConfig, images=str(tmp_path / "nope"))
    assert "set images" in errors(LoRATeacherConfig, trigger="zxq")  # would be ignored by world renders
    assert "caption_with=" in errors(LoRATeacherConfig, images=str(tmp_path), caption_with="blip")
    assert "{caption}" in errors(LoRATeacherConfig, images=str(tmp_path), caption_template="{caption}")
    assert errors(LoRATeacherConfig, images=str(tmp_path), caption_template="{trigger}, {caption}",
                  caption_with="classifier") == ""
    for kind in ("canny", "sketch", "depth", "edges", "scribble"):  # aliases of sdxs_core.control's table
        assert errors(ControlNetTeacherConfig, control_type=kind) == ""
    assert "control_type='thermal'" in errors(ControlNetTeacherConfig, control_type="thermal")
    monkeypatch.setenv("SDXS_DEPTH_MODEL", str(tmp_path / "no-model"))  # maps of user images need a depth model
    assert "control_type='depth' with images needs a depth model" in \
        errors(ControlNetTeacherConfig, control_type="depth", images=str(tmp_path))
    assert errors(ControlNetTeacherConfig, control_type="depth") == ""  # world renders: ground-truth depth


# ---- encoding ---------------------------------------------------------------------------------------
def encode_as_before(vae, images, chunk):
    """``world_data``'s encoding loop as it was before it moved to ``encode_latents``."""
    device = next(vae.parameters()).device
    latents = []
    for s in range(0, len(images), chunk):
        x = torch.as_tensor(images[s:s + chunk]).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            enc = vae.encode(x)
        latents.append(((enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents)
                        * vae.config.scaling_factor).float().cpu())
    return torch.cat(latents)


def test_encode_latents_gives_world_data_its_former_numbers(tiny_dir):
    from diffusers import AutoencoderKL

    from trainers.core.components import load_components
    from trainers.methods.controlnets import world_data
    from trainers.miniature import world

    torch.set_num_threads(1)
    tiny = load_components(tiny_dir, "cpu")["vae"]  # an AutoencoderTiny: its latents
    real = world.render_batch(5, 7, style="pastel")
    data = world_data(tiny, 7, 5, "edges", "pastel", chunk=3)
    assert torch.equal(data["latents"], encode_as_before(tiny, real["images"], 3))
    assert data["prompts"] == list(real["captions"]) and data["maps"].shape == (7, 64, 64, 3)
    torch.manual_seed(0)
    kl = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8).eval()  # the posterior mean: no sampling noise
    once, chunked = encode_latents(kl, real["images"]), encode_latents(kl, real["images"], chunk=3)
    assert torch.equal(chunked, encode_as_before(kl, real["images"], 3)) and torch.equal(once, encode_latents(kl, real["images"]))
    torch.testing.assert_close(once, chunked)


# ---- the trainers on a folder -----------------------------------------------------------------------
def run(method_cls, teacher, run_dir, **kw):
    from trainers.core.config import load_config
    from trainers.core.loop import train

    torch.set_num_threads(1)
    small = dict(batch_size=2, num_prompts=8, max_steps=2, checkpoint_every=100, log_every=1, val_prompts=["a b"],
                 lr=1e-3)
    known = {f.name for f in dataclasses.fields(method_cls.config_cls)}
    cfg = load_config(method_cls.config_cls, None, {**{k: v for k, v in small.items() if k in known},
                                                    "teacher": str(teacher), "run_dir": str(run_dir), **kw})
    method = method_cls(cfg.validate())
    return train(cfg, method), method


def test_lora_teacher_learns_a_folder_of_style_images(tmp_path, tiny_dir):
    from sdxs_core import load_engine
    from trainers.methods.lora_teacher import LoRATeacher

    folder = scenes(tmp_path / "style")
    out, method = run(LoRATeacher, tiny_dir, tmp_path / "run", images=str(folder), trigger="zxq",
                      caption_template="{trigger} style", lora_rank=2)
    assert method.pairs["prompts"] == ["zxq style"] * 8 and method.pairs["latents"].shape == (8, 4, 8, 8)
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    made = json.loads((out / "train_info.json").read_text())
    assert (made["images"], made["trigger"], made["num_images"], made["steps"]) == (str(folder), "zxq", 8, 2)
    engine = load_engine(tiny_dir, lora=out, device="cpu")
    assert engine.generate("zxq style", seed=0, num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("control_type", ["sketch", "canny"])
def test_controlnet_teacher_learns_a_folder_with_live_loop_maps(tmp_path, tiny_dir, control_type):
    from pathlib import Path

    from sdxs_core.control import extract
    from sdxs_core.catalogue import control_type_of
    from trainers.methods.controlnet_teacher import ControlNetTeacher

    folder = scenes(tmp_path / "photos", n=4)
    out, method = run(ControlNetTeacher, tiny_dir, tmp_path / "run", images=str(folder), control_type=control_type,
                      val_steps=1)
    images = read_image_folder(folder, 64)["images"]
    want = np.stack([extract(control_type, im, size=64).image for im in images])
    assert method.pairs["maps"].shape == (4, 64, 64, 3) and np.array_equal(method.pairs["maps"], want)
    assert want.max() == 255  # the scenes have lines to learn
    made = json.loads((out / "train_info.json").read_text())
    assert (made["images"], made["num_images"], made["control_type"]) == (str(folder), 4, control_type)
    assert control_type_of(Path(out)) == control_type  # what the app reads


def test_controlnet_teacher_world_sketch_and_edges_named_canny(tmp_path, tiny_dir):
    from pathlib import Path

    from sdxs_core.control import extract
    from sdxs_core.catalogue import control_type_of
    from trainers.core.losses import unwrap
    from trainers.methods.controlnet_teacher import ControlNetTeacher
    from trainers.miniature import world

    out, method = run(ControlNetTeacher, tiny_dir, tmp_path / "sketch", control_type="sketch", num_images=2,
                      max_steps=1, val_steps=1)
    renders = world.render_batch(0, 2, style="plain")["images"]
    assert np.array_equal(method.pairs["maps"], np.stack([extract("sketch", im).image for im in renders]))
    assert control_type_of(Path(out)) == "sketch"
    edges = ControlNetTeacher(dataclasses.replace(method.config, control_type="edges"))  # the existing configs' name
    edges.pairs = method.pairs
    out = edges.export(tmp_path / "edges", {"controlnet": unwrap(method.nets["controlnet"])}, {"steps": 1})
    assert json.loads((Path(out) / "train_info.json").read_text())["control_type"] == "canny"
    assert control_type_of(Path(out)) == "canny"
