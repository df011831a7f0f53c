"""Bad input at every boundary (engine, LoRA files, model folders, CLI, app, live socket): refused
with a message naming the field and its range, never a silent black image or a traceback."""

import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch

from sdxs_core.errors import RANGES, InvalidInputError, NonFiniteOutputError, check

SIZE = dict(height=64, width=64)
NAN, INF = float("nan"), float("inf")


# ---- the one table of ranges --------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,words", [
    ("Images", 0, "Images: at least 1"), ("Images", -3, "Images: at least 1"), ("Images", 17, "Images: at most 16"),
    ("Seed", 2**63, "Seed: at most 2**63 - 1"), ("Seed", -1, "Seed: at least 0"),
    ("Guidance", NAN, "Guidance: must be a finite number in [0, 30]"),
    ("Control strength", 1e300, "Control strength: at most 2"), ("LoRA scale", INF, "LoRA scale: must be a finite"),
    ("Strength", -0.5, "Strength: at least 0"), ("Steps", 0, "Steps: at least 1"),
])
def test_ranges_name_the_field_and_range(field, value, words):
    with pytest.raises(InvalidInputError, match=rf"^{__import__('re').escape(words)}") as e:
        check(field, value)
    assert e.value.field == field and "[" in str(e.value)


def test_text_is_parsed_only_where_asked():
    assert check("Seed", " 12 ", text=True) == 12 and check("Images", 2.0) == 2
    with pytest.raises(InvalidInputError, match="^Seed: must be an integer"):
        check("Seed", "abc", text=True)
    with pytest.raises(InvalidInputError, match="^Seed: must be an integer"):
        check("Seed", "12")  # Python callers pass numbers
    assert set(RANGES) >= {"Seed", "Images", "Steps", "Guidance", "Control strength", "LoRA scale", "Strength"}


# ---- the engine ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(num_images=0), "Images: at least 1"), (dict(num_images=-3), "Images: at least 1"),
    (dict(guidance_scale=NAN), "Guidance: must be a finite"), (dict(guidance_scale=INF), "Guidance: must be a finite"),
    (dict(control_scale=NAN), "Control strength: must be a finite"), (dict(seed=2**63), "Seed: at most"),
    (dict(num_inference_steps=1001), "Steps: at most 1000"),
])
def test_engine_refuses_out_of_range_numbers(engine, kwargs, words):
    with pytest.raises(InvalidInputError, match=f"^{words}"):
        engine.generate("a", **SIZE, **kwargs)


def test_engine_refuses_a_non_finite_lora_scale(engine, tiny_lora_file):
    with pytest.raises(InvalidInputError, match="^LoRA scale"):
        engine.load_lora(tiny_lora_file, scale=NAN)
    assert engine.loras == {}
    name = engine.load_lora(tiny_lora_file, scale=0.5)
    with pytest.raises(InvalidInputError, match="^LoRA scale"):
        engine.set_lora_scale(name, INF)
    assert engine.loras == {name: 0.5}


def test_nan_weights_give_an_error_not_a_black_image(engine):
    """Whatever puts NaN into the network (a broken ControlNet, fp16 overflow), the output is checked."""
    with torch.no_grad():
        engine.unet.conv_out.bias.fill_(NAN)
    engine._networks_changed()
    for output_type in ("pil", "latent"):
        with pytest.raises(NonFiniteOutputError, match="NaN/inf"):
            engine.generate("a", seed=0, output_type=output_type, **SIZE)


def test_a_flat_image_is_flagged_not_passed_as_a_result(engine):
    """A finite but one-colour image (a saturated LoRA, say) comes back with a warning naming its seed."""
    assert engine.generate("a", seed=0, **SIZE).warnings == []
    last = [m for m in engine.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-5.0)  # decodes to black everywhere
    engine._networks_changed()
    out = engine.generate("a", seed=[3, 4], num_images=2, **SIZE)
    assert len(out.images) == 2 and not np.asarray(out.images[0]).any()
    assert len(out.warnings) == 1 and "2 of 2 images came out one flat colour (seed 3, seed 4)" in out.warnings[0]
    assert engine.generate("a", seed=0, output_type="latent", **SIZE).warnings == []


def test_a_distilled_model_refuses_many_steps(tiny_dir, tmp_path):
    from sdxs_core import load_engine

    student = shutil.copytree(tiny_dir, tmp_path / "student")
    (student / "train_info.json").write_text(json.dumps({"method": "ssd", "teacher": str(tiny_dir)}))
    engine = load_engine(student, device="cpu")
    with pytest.raises(InvalidInputError, match="^Steps: at most 4 on the one-step model"):
        engine.generate("a", seed=0, num_inference_steps=1000, **SIZE)
    assert len(engine.generate("a", seed=0, num_inference_steps=2, **SIZE).images) == 1
    teacher = load_engine(tiny_dir, device="cpu")  # no train_info: a teacher keeps its steps
    assert teacher.max_steps == 1000


# ---- LoRA files ---------------------------------------------------------------------------------------
def _nan_lora(tiny_lora_file, out):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_lora_file)
    key = sorted(state)[0]
    state[key][0, 0] = NAN
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out)
    return out


def test_a_pickle_lora_is_refused_without_unpickling(engine, tiny_lora_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sdxs_core.errors import NotAPipelineError

    path = tmp_path / "lora.bin"
    torch.save(load_file(tiny_lora_file), path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    with pytest.raises(NotAPipelineError, match="safetensors only"):
        engine.load_lora(path)
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["to_q"]}))
    shutil.copy(path, peft / "adapter_model.bin")
    with pytest.raises(NotAPipelineError, match="safetensors only"):
        engine.load_lora(peft)
    assert engine.loras == {}


def test_a_lora_with_nan_weights_is_refused_at_load(engine, tiny_lora_file, tmp_path):
    from sdxs_core.errors import CorruptWeightsError
    from sdxs_core.lora import lora_is_finite

    bad = _nan_lora(tiny_lora_file, tmp_path / "nan.safetensors")
    with pytest.raises(CorruptWeightsError, match="NaN/inf values in 1 of its"):
        engine.load_lora(bad)
    assert engine.loras == {} and not lora_is_finite(bad) and lora_is_finite(tiny_lora_file)
    assert len(engine.generate("a", seed=0, **SIZE).images) == 1  # the engine is untouched


def test_a_broken_adapter_config_names_the_file(engine, tiny_dir, tmp_path):
    from sdxs_core.errors import NotAPipelineError
    from sdxs_core.testkit import write_tiny_lora

    peft = write_tiny_lora(tiny_dir, tmp_path / "peft", fmt="peft")
    (peft / "adapter_config.json").write_text('{"r": 4 "lora_alpha": 4}')
    with pytest.raises(NotAPipelineError, match=r"adapter_config.json' is not valid JSON"):
        engine.load_lora(peft)
    (peft / "adapter_config.json").write_text('{"r": "four", "target_modules": 3}')
    with pytest.raises(NotAPipelineError, match="adapter_config.json"):
        engine.load_lora(peft)
    assert engine.loras == {}


def test_a_nan_lora_is_never_offered_as_fitting(tiny_dir, tiny_lora_file, tmp_path):
    from sdxs_core.fits import lora_fits

    good = shutil.copy(tiny_lora_file, tmp_path / "good.safetensors")
    bad = _nan_lora(tiny_lora_file, tmp_path / "bad.safetensors")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_dir / "unet")
    assert lora_fits(unet, str(good)) and not lora_fits(unet, str(bad))


# ---- model folders ------------------------------------------------------------------------------------
def _sdxl_shaped(tiny_dir, out):
    """The tiny pipeline made SDXL-shaped: a second text encoder and a U-Net wanting SDXL's extra
    conditioning; every file loads, so only a family check can tell."""
    from diffusers import UNet2DConditionModel

    from sdxs_core.architectures import tiny_unet_config

    folder = shutil.copytree(tiny_dir, out)
    unet = UNet2DConditionModel(**tiny_unet_config(), addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=32 + 6 * 8)
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    shutil.copytree(folder / "text_encoder", folder / "text_encoder_2")
    shutil.copytree(folder / "tokenizer", folder / "tokenizer_2")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=index["text_encoder"],
                 tokenizer_2=index["tokenizer"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_pipeline_of_another_family_is_refused_at_load(tiny_dir, tmp_path):
    from sdxs_core import NotAPipelineError, load_engine

    folder = _sdxl_shaped(tiny_dir, tmp_path / "sdxl")
    with pytest.raises(NotAPipelineError, match="SDXL-style StableDiffusionXLPipeline.*addition_embed_type='text_time'"):
        load_engine(folder, device="cpu")


def test_a_text_encoder_of_another_width_is_refused_at_load(tiny_dir, other_base_dir, tmp_path):
    from sdxs_core import NotAPipelineError, load_engine

    folder = shutil.copytree(tiny_dir, tmp_path / "mixed")
    shutil.rmtree(folder / "unet")
    shutil.copytree(other_base_dir / "unet", folder / "unet")
    with pytest.raises(NotAPipelineError, match="text encoder gives 32-wide embeddings but the U-Net reads 48"):
        load_engine(folder, device="cpu")


def test_a_pipeline_folder_without_its_unet_names_what_is_missing(tiny_dir, tmp_path):
    from sdxs_core import NotAPipelineError, load_engine

    folder = shutil.copytree(tiny_dir, tmp_path / "no-unet")
    shutil.rmtree(folder / "unet")
    with pytest.raises(NotAPipelineError, match=r"unet/config.json is missing"):
        load_engine(folder, device="cpu")


def test_an_sdxl_controlnet_is_refused(tiny_dir, tiny_controlnet_dir, tmp_path):
    from sdxs_core import IncompatibleWeightsError, load_engine

    from diffusers import ControlNetModel

    config = dict(ControlNetModel.load_config(tiny_controlnet_dir), addition_embed_type="text_time",
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
    folder = tmp_path / "cn-xl"
    ControlNetModel.from_config(config).save_pretrained(folder)
    with pytest.raises(IncompatibleWeightsError, match="another family"):
        load_engine(tiny_dir, controlnet=folder, device="cpu")


# ---- the command line ---------------------------------------------------------------------------------
def _cli(capsys, *argv):
    from sdxs_core.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return code, err


@pytest.fixture()
def no_model_load(monkeypatch):
    """Checks that must happen before a model loads: loading fails the test."""
    import sdxs_core.loading

    monkeypatch.setattr(sdxs_core.loading, "load_engine", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("extra,words", [
    (["--num-images", "0"], "error: Images: at least 1"), (["--num-images", "-3"], "error: Images: at least 1"),
    (["--seed", str(2**63)], "error: Seed: at most 2**63 - 1"), (["--guidance", "nan"], "error: Guidance: must be a finite"),
    (["--control-scale", "inf"], "error: Control strength: must be a finite"),
    (["--lora-scale", "nan"], "error: LoRA scale: must be a finite"), (["--steps", "0"], "error: Steps: at least 1"),
])
def test_cli_refuses_bad_numbers_before_loading(capsys, tmp_path, no_model_load, extra, words):
    code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(tmp_path / "x.png"), *extra)
    assert code == 2 and err.startswith(words) and "[--" in err


def test_cli_checks_the_output_path_before_generating(capsys, tmp_path, no_model_load):
    code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(tmp_path / "picture"))
    assert code == 2 and "Out: " in err and "no image extension" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(blocker / "x.png"))
    assert code == 2 and "Out: cannot create the folder" in err


def test_cli_refuses_bad_control_images_before_loading(capsys, tmp_path, no_model_load, monkeypatch):
    from PIL import Image

    # PIL's own bomb limit as the CLI has it (a served app in another test lowers it process-wide)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1024 * 1024 * 1024 // 4 // 3))

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(tmp_path / "x.png"), "--control-image", str(text))
    assert code == 2 and "Control image: 'notes.png' is not an image" in err
    for side, words in ((60000, "claims more pixels than PIL will decode safely"), (9000, "is 9000x9000")):
        bomb = tmp_path / f"bomb-{side}.png"
        Image.new("L", (1, 1)).save(bomb)
        data = bytearray(bomb.read_bytes())
        data[16:24] = side.to_bytes(4, "big") * 2  # IHDR width and height: only the header claims the size
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
        bomb.write_bytes(bytes(data))
        code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(tmp_path / "x.png"), "--control-image",
                         str(bomb))
        assert code == 2 and f"Control image: '{bomb.name}' {words}" in err


def test_cli_refuses_an_unknown_device_and_a_pickle_lora(capsys, tmp_path, tiny_dir, tiny_lora_file):
    from safetensors.torch import load_file

    code, err = _cli(capsys, "generate", "--prompt", "a", "--out", str(tmp_path / "x.png"), "--device", "tpu9")
    assert code == 2 and err.startswith("error: Device: 'tpu9' is not a device")
    pickle = tmp_path / "lora.bin"
    torch.save(load_file(tiny_lora_file), pickle)
    code, err = _cli(capsys, "generate", "--model", str(tiny_dir), "--prompt", "a", "--out", str(tmp_path / "x.png"),
                     "--lora", str(pickle))
    assert code == 2 and "safetensors only" in err


def test_cli_honours_exif_orientation(tmp_path):
    from PIL import Image

    from sdxs_core.images import read_image_file

    photo = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image_file(tmp_path / "phone.jpg").size == (20, 40)


def test_cli_info_columns_line_up(capsys):
    from sdxs_core.cli import main

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    starts = {line.index(" pipeline ") for line in lines if " pipeline " in line}
    sources = {len(line) - len(line.split()[-1]) for line in lines}
    assert len(starts) == 1 and len(sources) == 1, lines


# ---- the live socket ----------------------------------------------------------------------------------
@pytest.mark.parametrize("header,words", [
    ({"strength": 1e300}, "Control strength: at most 2"), ({"strength": "nan"}, "Control strength: must be a finite"),
    ({"strength": None}, "Control strength: must be a finite"), ({"seed": "abc"}, "Seed: must be an integer"),
    ({"seed": 2**63}, "Seed: at most 2**63 - 1"), ({"seed": 2.5}, "Seed: must be an integer"),
])
def test_live_frame_settings_are_checked_by_name(header, words):
    from sdxs_core.live_socket import FrameError, frame_params
    from sdxs_core.stream import LiveParams

    with pytest.raises(FrameError, match=f"^{__import__('re').escape(words)}"):
        frame_params(header)
    assert frame_params({"strength": "0.5", "seed": 3.0}) == LiveParams("", "canny", 0.5, 3)


# ---- the app ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_client(tiny_app):
    from gradio_client import Client

    return Client(tiny_app[1], verbose=False)


def _api_error(client, *args, api_name):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


@pytest.mark.parametrize("args,words", [
    (("a", "none", "abc", False, 2), "Seed: must be an integer"),
    (("a", "none", 0, False, 0), "Images: at least 1"),
    (("a", "none", 0, False, 9), "Images: at most 8"),
    (("a", "none", -5, False, 1), "Seed: at least 0"),
])
def test_the_generate_endpoint_names_the_field(app_client, args, words):
    assert words in _api_error(app_client, *args, api_name="/generate")


def test_the_live_and_sketch_endpoints_name_the_field(app_client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    frame = tmp_path / "frame.png"
    Image.new("RGB", (32, 32), "white").save(frame)
    message = _api_error(app_client, handle_file(str(frame)), "a", "canny", 5.0, 0, api_name="/live_frame")
    assert "Control strength: at most 2" in message
    message = _api_error(app_client, handle_file(str(frame)), "a", "canny", 1.0, "x", api_name="/live_frame")
    assert "Seed: must be an integer" in message
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    message = _api_error(app_client, handle_file(str(junk)), "a", "canny", 1.0, 0, api_name="/live_frame")
    assert "Frame: not an image the server can read" in message


# ---- switching LoRAs in the app's model holder --------------------------------------------------------
def test_a_failed_lora_switch_keeps_the_active_lora(tiny_dir, tmp_path):
    from sdxs_core.catalogue import ensure_tiny_model
    from sdxs_core.hub import ModelHub, TextRequest, text_to_image
    from sdxs_core.testkit import write_tiny_lora

    root = tmp_path / "outputs"
    model, _ = ensure_tiny_model(root)
    write_tiny_lora(model, root / "good")
    broken = write_tiny_lora(model, root / "broken", fmt="peft")
    hub = ModelHub(search_dirs=[root], device="cpu", outputs=root)
    hub.start("outputs/tiny-model")
    good = "outputs/good/pytorch_lora_weights.safetensors"
    assert "at scale 0.5" in hub.set_lora(good, 0.5)
    before = np.asarray(text_to_image(hub, TextRequest("a", seed=3)).images[0])
    (broken / "adapter_config.json").write_text('{"r": 4 "lora_alpha": 4}')  # broken after it was listed
    notice = hub.set_lora("outputs/broken", 1.0)
    assert "not loaded" in notice and "not valid JSON" in notice and f"Still using **{good}**" in notice
    assert hub.lora_key == good and len(hub.engine.loras) == 1
    after = np.asarray(text_to_image(hub, TextRequest("a", seed=3)).images[0])
    assert np.array_equal(before, after)
    hub.set_lora_scale(1.0)
    assert list(hub.engine.loras.values()) == [1.0]
    assert hub.set_lora("none") == "No LoRA." and hub.lora_key is None and hub.engine.loras == {}


# ---- shipped folders in plain diffusers ---------------------------------------------------------------
def _shipped(kind):
    from sdxs_core.presets import ASSETS

    root = ASSETS / "miniature"
    if kind == "pipeline":
        return sorted(p for p in root.iterdir() if (p / "model_index.json").is_file())
    return sorted(f for p in root.iterdir() if p.name.startswith("lora-") for f in p.glob("*.safetensors"))


@pytest.mark.parametrize("folder", _shipped("pipeline"), ids=lambda p: p.name)
def test_shipped_pipelines_generate_in_plain_diffusers(folder):
    """``StableDiffusionPipeline.from_pretrained(folder)`` as a diffusers user types it, no dtype
    given: every component must come out in one dtype, and one generation must run."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    dtypes = {name: m.dtype for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=0.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert np.isfinite(image).all() and image.std() > 0.01


@pytest.mark.parametrize("lora", _shipped("lora"), ids=lambda p: p.parent.name)
def test_shipped_loras_load_in_plain_diffusers(lora):
    """Each shipped LoRA on the pipeline it was made for (the one whose U-Net it fits), through
    diffusers' own ``load_lora_weights``; the image must change and stay finite."""
    from diffusers import StableDiffusionPipeline

    from sdxs_core.fits import lora_fits

    base = next(p for p in _shipped("pipeline") if lora_fits(
        StableDiffusionPipeline.from_pretrained(p, safety_checker=None, requires_safety_checker=False).unet, str(lora)))
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    kw = dict(num_inference_steps=1, guidance_scale=0.0, output_type="np")
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images[0]
    pipe.load_lora_weights(lora)
    styled = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images[0]
    assert np.isfinite(styled).all() and np.abs(styled - plain).max() > 1e-3


def test_a_half_precision_export_loads_in_float32(tmp_path):
    """What the recipes' fp16 exports write: half weights on disk, float32 on a plain load."""
    from diffusers import StableDiffusionPipeline

    from sdxs_core.testkit import build_tiny_pipeline
    from trainers.core.pipeline_folder import write_pipeline_atomically

    pipe = build_tiny_pipeline()
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.half()
    out = write_pipeline_atomically(pipe, tmp_path / "half")
    loaded = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    assert loaded.text_encoder.dtype == loaded.unet.dtype == torch.float32
    from safetensors import safe_open

    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_the_default_model_gives_the_engines_images_in_plain_diffusers():
    from diffusers import StableDiffusionPipeline

    from sdxs_core import load_engine
    from sdxs_core.presets import DEFAULT_MODEL, PRESETS

    pipe = StableDiffusionPipeline.from_pretrained(PRESETS[DEFAULT_MODEL].source, safety_checker=None,
                                                   requires_safety_checker=False)
    ref = pipe(["a red circle", "a blue square"], num_inference_steps=1, guidance_scale=0.0, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in (4, 5)]).images
    out = load_engine(DEFAULT_MODEL, device="cpu").generate(["a red circle", "a blue square"], seed=[4, 5],
                                                            output_type="np").images
    assert np.abs(out - ref).max() <= 1 / 255


def test_the_sketch_endpoint_names_bad_input(app_client, tmp_path):
    from gradio_client import handle_file

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    canvas = {"background": handle_file(str(junk)), "layers": [], "composite": handle_file(str(junk))}
    assert "Sketch: not an image" in _api_error(app_client, canvas, "a", 0.8, 0, api_name="/sketch")
    from PIL import Image

    good = tmp_path / "pad.png"
    Image.new("RGB", (64, 64), "white").save(good)
    canvas = {"background": handle_file(str(good)), "layers": [], "composite": handle_file(str(good))}
    assert "Seed: must be an integer" in _api_error(app_client, canvas, "a", 0.8, "x", api_name="/sketch")
    assert "Sketch strength: must be a finite" in _api_error(app_client, canvas, "a", "nan", 0, api_name="/sketch")
