"""Loading: presets, local folders, offline hub ids and every kind of bad folder."""

import json
import shutil

import pytest
import torch

from sdxs_core import ModelNotFoundError, ModelUnavailableError, NotAPipelineError, load_engine
from sdxs_core.architectures import (build_controlnet, build_sdxs512_unet, build_taesd, build_unet, count_params,
                                     sdxs512_unet_config, tiny_unet_config)
from sdxs_core.devices import resolve_device, resolve_dtype
from sdxs_core.sources import resolve_model_dir


def test_loads_local_folder_on_cpu_fp32(tiny_dir):
    engine = load_engine(tiny_dir)
    assert engine.device.type == "cpu" and engine.dtype == torch.float32
    assert engine.default_size == 64 and engine.size_multiple == 16


def test_dtype_override(tiny_dir):
    engine = load_engine(tiny_dir, device="cpu", dtype="bf16")
    assert engine.unet.dtype == torch.bfloat16
    assert engine.generate("a", seed=0, height=64, width=64).images[0].size == (64, 64)


def test_device_policy():
    assert resolve_dtype(torch.device("cuda"), None) == torch.float16
    assert resolve_dtype(torch.device("cpu"), None) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype(torch.device("cpu"), "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_missing_path():
    with pytest.raises(ModelNotFoundError, match="no pipeline at './nowhere/model'"):
        load_engine("./nowhere/model")


def test_component_folder_is_not_a_pipeline(tiny_dir):
    with pytest.raises(NotAPipelineError, match="model_index.json is missing.*UNet2DConditionModel"):
        load_engine(tiny_dir / "unet")


def test_corrupt_weights(tiny_dir, tmp_path):
    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(NotAPipelineError, match="could not load"):
        load_engine(broken)


def test_corrupt_index(tiny_dir, tmp_path):
    broken = shutil.copytree(tiny_dir, tmp_path / "broken-index")
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(NotAPipelineError, match="corrupt"):
        load_engine(broken)


def test_pickle_only_weights_are_refused(tiny_dir, tmp_path):
    pickled = shutil.copytree(tiny_dir, tmp_path / "pickled")
    unet_dir = pickled / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(NotAPipelineError, match="pickled .bin weights are not loaded"):
        load_engine(pickled)


def test_offline_hub_model_gives_one_clear_paragraph(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailableError) as info:
        load_engine("sdxs-512-dreamshaper")
    message = str(info.value)
    assert "IDKiro/sdxs-512-dreamshaper" in message and "hf download IDKiro/sdxs-512-dreamshaper" in message
    assert "\n" not in message and "--model miniature" in message


def test_presets_resolve_by_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(NotAPipelineError, match="is a controlnet preset"):
        resolve_model_dir("sdxs-512-dreamshaper-sketch", kind="pipeline")
    with pytest.raises(ModelUnavailableError, match="IDKiro/sdxs-512-dreamshaper-anime"):
        resolve_model_dir("sdxs-512-dreamshaper-anime", kind="lora")


def test_hub_cache_is_used_offline(tiny_dir, tmp_path, monkeypatch):
    """A model in the HF cache loads offline by its hub id (what `hf download` leaves behind)."""
    cache = tmp_path / "hub"
    repo = cache / "models--IDKiro--sdxs-512-dreamshaper"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    engine = load_engine("sdxs-512-dreamshaper")
    assert engine.name == "sdxs-512-dreamshaper"


def test_sdxs512_unet_is_the_real_architecture():
    with torch.device("meta"):
        unet = build_sdxs512_unet(seed=None)
    assert round(count_params(unet) / 1e6, 1) == 315.7
    assert unet.mid_block is None and unet.config.cross_attention_dim == 768
    assert sdxs512_unet_config(1024)["cross_attention_dim"] == 1024


def test_taesd_decoder_size():
    assert round(count_params(build_taesd().decoder) / 1e6, 2) == 1.22
    taesd, half = build_taesd(size="taesd", factor=4), build_taesd(size="half", factor=4)
    assert taesd.config.decoder_block_out_channels == (64,) * 3 and half.config.decoder_block_out_channels == (32,) * 3
    assert count_params(half.decoder) < count_params(taesd.decoder) / 3
    with pytest.raises(ValueError, match="size='huge'"):
        build_taesd(size="huge")


def test_controlnet_for_midblock_less_unet():
    from diffusers import ControlNetModel

    unet = build_unet(tiny_unet_config())
    with pytest.raises(ValueError, match="mid_block_type"):
        ControlNetModel.from_unet(unet)  # why build_controlnet exists
    controlnet = build_controlnet(unet)
    torch.testing.assert_close(controlnet.conv_in.weight, unet.conv_in.weight)
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        down, mid = controlnet(x, 999, text, controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
        plain = unet(x, 999, text).sample
        steered = unet(x, 999, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(plain, steered)  # zero convs: a fresh ControlNet changes nothing
    assert len(down) == len(controlnet.controlnet_down_blocks)


def test_controlnet_conditioning_downsamples_to_latent_size():
    unet = build_unet(tiny_unet_config())
    controlnet = build_controlnet(unet, vae_scale_factor=4)
    assert len(controlnet.config.conditioning_embedding_out_channels) == 3  # log2(4) + 1
    emb = controlnet.controlnet_cond_embedding(torch.rand(1, 3, 32, 32))
    assert emb.shape[-2:] == (8, 8)


def test_model_index_without_unet(tiny_dir, tmp_path):
    odd = shutil.copytree(tiny_dir, tmp_path / "odd")
    index = json.loads((odd / "model_index.json").read_text())
    del index["unet"]
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(NotAPipelineError, match="without unet"):
        load_engine(odd)


def test_vae_argument_swaps_in_another_decoder_under_the_models_own_unet(tiny_dir, tmp_path):
    from sdxs_core.testkit import write_tiny_pipeline

    other = write_tiny_pipeline(tmp_path / "other", seed=3)
    torch.manual_seed(7)
    build_taesd(4, "tiny").save_pretrained(tmp_path / "decoder-only", safe_serialization=True)
    own, theirs = load_engine(tiny_dir, device="cpu"), load_engine(other, device="cpu")
    swapped = load_engine(tiny_dir, device="cpu", vae=other)  # a pipeline folder: its vae/
    for name, value in swapped.vae.state_dict().items():
        assert torch.equal(value, theirs.vae.state_dict()[name])
    for name, value in swapped.unet.state_dict().items():
        assert torch.equal(value, own.unet.state_dict()[name])
    alone = load_engine(tiny_dir, device="cpu", vae=tmp_path / "decoder-only")  # a decoder's own folder
    images = [e.generate("a", seed=1, output_type="np").images for e in (own, swapped, alone)]
    assert abs(images[0] - images[1]).max() > 1e-3 and abs(images[1] - images[2]).max() > 1e-3


def test_vae_argument_refuses_a_decoder_for_other_latents_and_a_non_decoder(tiny_dir, tiny_controlnet_dir, tmp_path):
    from sdxs_core import IncompatibleWeightsError

    build_taesd(8, "tiny").save_pretrained(tmp_path / "wide", safe_serialization=True)
    with pytest.raises(IncompatibleWeightsError, match="8-channel latents; the U-Net makes 4"):
        load_engine(tiny_dir, device="cpu", vae=tmp_path / "wide")
    with pytest.raises(NotAPipelineError, match="ControlNetModel, not a decoder"):
        load_engine(tiny_dir, device="cpu", vae=tiny_controlnet_dir)
    with pytest.raises(ModelNotFoundError, match="no vae at"):
        load_engine(tiny_dir, device="cpu", vae=tmp_path / "nowhere")
