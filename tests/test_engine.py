"""The one-step engine against diffusers' own pipelines, plus its noise, cache and LoRA state."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from sdxs_core import IncompatibleWeightsError, PromptTruncatedWarning, load_engine
from sdxs_core.testkit import write_tiny_lora, write_tiny_pipeline

SIZE = dict(height=64, width=64)


def _reference(pipe, prompts, seeds, **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, generator=gens, output_type="np", **SIZE, **kw).images


def _diffusers(path):
    return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)


@pytest.mark.parametrize("scheduler", ["ddpm", "euler", "lcm"])
def test_one_step_equals_diffusers(tmp_path, scheduler):
    path = write_tiny_pipeline(tmp_path / scheduler, scheduler=scheduler)
    engine = load_engine(path, device="cpu")
    prompts, seeds = ["a red circle", "a blue square"], [3, 11]
    out = engine.generate(prompts, seed=seeds, output_type="np", **SIZE)
    ref = _reference(_diffusers(path), prompts, seeds, num_inference_steps=1, guidance_scale=0.0)
    np.testing.assert_allclose(out.images, ref, atol=1e-5)
    assert out.images.std() > 0.01  # not a degenerate constant image


def test_multi_step_cfg_equals_diffusers(tiny_dir, engine):
    out = engine.generate("a red circle", seed=5, num_inference_steps=3, guidance_scale=4.0, output_type="np", **SIZE)
    ref = _reference(_diffusers(tiny_dir), ["a red circle"], [5], num_inference_steps=3, guidance_scale=4.0)
    np.testing.assert_allclose(out.images, ref, atol=1e-5)


def test_controlnet_equals_diffusers(tiny_dir, tiny_controlnet_dir):
    engine = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu")
    control = Image.fromarray(np.random.RandomState(0).randint(0, 255, (90, 70, 3), dtype=np.uint8))
    out = engine.generate("a star", seed=7, control_image=control, control_scale=0.8, output_type="np", **SIZE)
    pipe = StableDiffusionControlNetPipeline(**_diffusers(tiny_dir).components,
                                             controlnet=ControlNetModel.from_pretrained(tiny_controlnet_dir))
    ref = pipe("a star", image=control, controlnet_conditioning_scale=0.8, num_inference_steps=1, guidance_scale=0.0,
               generator=torch.Generator().manual_seed(7), output_type="np", **SIZE).images
    np.testing.assert_allclose(out.images, ref, atol=1e-5)
    off = engine.generate("a star", seed=7, control_image=control, control_scale=0.0, output_type="np", **SIZE)
    assert np.abs(out.images - off.images).max() > 1e-3  # the control actually steers the image


def test_sdedit_equals_diffusers_img2img(tiny_dir, engine):
    from diffusers import StableDiffusionImg2ImgPipeline

    f = engine.vae_scale_factor
    init = torch.randn(2, 4, 64 // f, 64 // f, generator=torch.Generator().manual_seed(0))
    kw = dict(num_inference_steps=4, guidance_scale=4.0)
    out = engine.generate(["a red circle", "a cat"], seed=[5, 6], init_latents=init, strength=0.5, output_type="np",
                          **SIZE, **kw)
    pipe = StableDiffusionImg2ImgPipeline(**_diffusers(tiny_dir).components)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    ref = pipe(["a red circle", "a cat"], image=init, strength=0.5, generator=gens, output_type="np", **kw).images
    np.testing.assert_allclose(out.images, ref, atol=1e-5)
    full = engine.generate(["a red circle", "a cat"], seed=[5, 6], output_type="np", **SIZE, **kw)
    assert np.abs(out.images - full.images).max() > 1e-3  # it started from init_latents, not from noise


def test_sdedit_refuses_what_it_cannot_run(engine):
    f = engine.vae_scale_factor
    init = torch.zeros(1, 4, 64 // f, 64 // f)
    with pytest.raises(ValueError, match="multi-step"):
        engine.generate("a", seed=0, init_latents=init, strength=0.5, **SIZE)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4, 4\)"):
        engine.generate("a", seed=0, init_latents=init[..., :4, :4], strength=0.5, num_inference_steps=4, **SIZE)
    with pytest.raises(ValueError, match="at least one of the 4 steps"):
        engine.generate("a", seed=0, init_latents=init, strength=0.1, num_inference_steps=4, **SIZE)
    with pytest.raises(ValueError, match="pass init_latents with it"):
        engine.generate("a", seed=0, strength=0.5, num_inference_steps=4, **SIZE)


def test_per_image_seeds_do_not_depend_on_batch(engine):
    batch = engine.generate(["a", "b", "c"], seed=[1, 2, 3], output_type="np", **SIZE).images
    alone = engine.generate("b", seed=2, output_type="np", **SIZE).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-6)
    assert np.abs(batch[0] - batch[2]).max() > 1e-3
    counted = engine.generate("a", seed=10, num_images=3, output_type="np", **SIZE)
    assert counted.seeds == [10, 11, 12]


def test_fixed_noise_is_reused(engine):
    a = engine.generate("a", seed=4, fixed_noise=True, output_type="latent", **SIZE)
    noise = engine._fixed_noise([4], 64, 64)
    assert noise is engine._fixed_noise([4], 64, 64)
    b = engine.generate("a", seed=4, fixed_noise=True, output_type="latent", **SIZE)
    torch.testing.assert_close(a.images, b.images)
    explicit = engine.generate("a", seed=999, noise=noise, output_type="latent", **SIZE)
    torch.testing.assert_close(explicit.images, a.images)


def test_prompt_embeddings_are_cached(engine):
    calls = []
    hook = engine.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    engine.generate("a cached prompt", seed=0, **SIZE)
    engine.generate("a cached prompt", seed=1, **SIZE)
    engine.generate(["a cached prompt", "a new one"], seed=[0, 1], **SIZE)
    hook.remove()
    assert len(calls) == 2  # once for the first prompt, once for the new one


def test_empty_prompt_and_long_prompt(engine):
    assert len(engine.generate("", seed=0, **SIZE).images) == 1
    long = "a red circle above a blue square " * 10
    with pytest.warns(PromptTruncatedWarning, match="truncated"):
        cut = engine.generate(long, seed=0, output_type="np", **SIZE).images
    with pytest.warns(PromptTruncatedWarning):
        longer = engine.generate(long + "and a purple star", seed=0, output_type="np", **SIZE).images
    np.testing.assert_allclose(cut, longer, atol=1e-6)  # words past token 77 are dropped, not crashed on
    short = engine.generate("a red circle", seed=0, output_type="np", **SIZE).images
    assert np.abs(short - cut).max() > 1e-4


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, "7", 1.5])
def test_bad_seeds_are_rejected(engine, seed):
    with pytest.raises(ValueError, match=r"^Seed: .*\[0, 2\*\*63 - 1\]"):
        engine.generate("a", seed=seed, **SIZE)


def test_extreme_valid_seeds(engine):
    assert engine.generate("a", seed=2**63 - 1, **SIZE).seeds == [2**63 - 1]
    assert engine.generate("a", seed=0, **SIZE).seeds == [0]


@pytest.mark.parametrize("side", [0, 60, 100])
def test_bad_sizes_name_the_value(engine, side):
    with pytest.raises(ValueError, match=f"height={side}"):
        engine.generate("a", seed=0, height=side, width=64)


def _control_inputs():
    rng = np.random.RandomState(1)
    rgb = rng.randint(0, 255, (50, 70, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    return {
        "rgb": Image.fromarray(rgb),
        "grey": Image.fromarray(grey, mode="L"),
        "rgba": Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]), mode="RGBA"),
        "pil16": Image.fromarray(grey.astype(np.uint16) * 257),
        "np16": rgb.astype(np.uint16) * 257,
        "float": rgb.astype(np.float32) / 255.0,
        "big": Image.fromarray(rng.randint(0, 255, (700, 300, 3), dtype=np.uint8)),
    }


def test_control_images_of_any_mode_and_size(tiny_dir, tiny_controlnet_dir):
    engine = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu")
    inputs = _control_inputs()
    outs = {k: engine.generate("a", seed=0, control_image=v, output_type="np", **SIZE).images for k, v in inputs.items()}
    for out in outs.values():
        assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    # 16-bit and float versions of the same picture carry the same content as the 8-bit one
    np.testing.assert_allclose(outs["np16"], outs["rgb"], atol=1e-5)
    np.testing.assert_allclose(outs["float"], outs["rgb"], atol=1e-2)
    np.testing.assert_allclose(outs["rgba"], outs["rgb"], atol=1e-5)  # opaque alpha changes nothing


def test_control_image_needs_controlnet(engine):
    with pytest.raises(ValueError, match="no ControlNet"):
        engine.generate("a", seed=0, control_image=np.zeros((64, 64, 3), np.uint8), **SIZE)


def test_lora_formats_agree_and_scale_and_unload(tiny_dir, tiny_lora_file, engine, tmp_path):
    base = engine.generate("a", seed=3, output_type="np", **SIZE).images
    name = engine.load_lora(tiny_lora_file, scale=1.0)
    with_lora = engine.generate("a", seed=3, output_type="np", **SIZE).images
    assert np.abs(with_lora - base).max() > 1e-3
    pipe = _diffusers(tiny_dir)
    pipe.load_lora_weights(str(tiny_lora_file.parent))
    np.testing.assert_allclose(with_lora, _reference(pipe, ["a"], [3], num_inference_steps=1, guidance_scale=0.0), atol=1e-5)
    engine.set_lora_scale(name, 0.0)
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, base, atol=1e-6)
    engine.unload_lora()
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, base, atol=1e-6)
    assert engine.loras == {}

    peft_dir = write_tiny_lora(tiny_dir, tmp_path / "peft", fmt="peft")
    engine.load_lora(peft_dir, adapter_name="peft")
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, with_lora, atol=1e-5)
    engine.unload_lora("peft")

    kohya = tmp_path / "kohya.safetensors"
    _write_kohya_copy(tiny_lora_file, kohya)
    engine.load_lora(kohya, adapter_name="kohya")
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, with_lora, atol=1e-5)


def test_a_lora_mixing_legacy_and_peft_names_loads_whole(tiny_dir, engine, tmp_path):
    """diffusers' converter names attention pairs "lora.down" but conv pairs "lora_A", and diffusers'
    own loader then drops the legacy half; the engine places every weight of such a file. A conv
    (LoCon-style) LoRA's scale can change after a traced generation."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
    mixed = write_tiny_lora(tiny_dir, tmp_path / "mixed", targets=targets)
    keys = load_file(str(mixed)).keys()
    assert any(".lora.down." in k for k in keys) and any(".lora_A." in k for k in keys)
    peft_dir = write_tiny_lora(tiny_dir, tmp_path / "peft", targets=targets, fmt="peft")
    base = engine.generate("a", seed=3, output_type="np", **SIZE).images
    engine.load_lora(mixed, adapter_name="mixed")
    assert len(get_peft_model_state_dict(engine.unet, adapter_name="mixed")) == len(keys)
    from_mixed = engine.generate("a", seed=3, output_type="np", **SIZE).images
    engine.set_lora_scale("mixed", 0.0)  # after a traced call: conv LoRA weights must stay toggleable
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, base, atol=1e-6)
    engine.unload_lora("mixed")
    engine.load_lora(peft_dir, adapter_name="peft")
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, from_mixed, atol=1e-5)
    engine.unload_lora("peft")
    assert np.abs(from_mixed - base).max() > 1e-3


def _write_kohya_copy(diffusers_file, out):
    """Rename a diffusers LoRA to kohya's sd-scripts naming (lora_unet_..., lora_down/up, alpha)."""
    from safetensors.torch import load_file, save_file

    state, kohya = load_file(str(diffusers_file)), {}
    for key, value in state.items():  # diffusers files name pairs "<module>.lora.down/up.weight"
        module, _, kind = key.removeprefix("unet.").removesuffix(".weight").rpartition(".lora.")
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{kind}.weight"] = value
        if kind == "down":
            kohya[f"{stem}.alpha"] = torch.tensor(float(value.shape[0]))  # alpha = rank: scale 1
    save_file(kohya, str(out))


def test_lora_for_another_base_fails_cleanly(other_base_dir, tmp_path, engine):
    foreign = write_tiny_lora(other_base_dir, tmp_path / "foreign")
    before = engine.generate("a", seed=3, output_type="np", **SIZE).images
    with pytest.raises(IncompatibleWeightsError, match="cross-attention width 48"):
        engine.load_lora(foreign)
    assert engine.loras == {}
    np.testing.assert_allclose(engine.generate("a", seed=3, output_type="np", **SIZE).images, before, atol=1e-6)


def test_controlnet_for_another_base_fails_cleanly(tiny_dir, other_base_dir, tmp_path):
    from sdxs_core.testkit import write_tiny_controlnet

    foreign = write_tiny_controlnet(other_base_dir, tmp_path / "foreign-cn")
    with pytest.raises(IncompatibleWeightsError, match="cross-attention width 48"):
        load_engine(tiny_dir, controlnet=foreign, device="cpu")


def test_kohya_lora_for_another_base_fails_cleanly(other_base_dir, tmp_path, engine):
    foreign = write_tiny_lora(other_base_dir, tmp_path / "foreign-k")
    kohya = tmp_path / "foreign-kohya.safetensors"
    _write_kohya_copy(foreign, kohya)
    with pytest.raises(IncompatibleWeightsError, match="cross-attention width 48"):
        engine.load_lora(kohya)
    assert engine.loras == {}


def test_attached_controlnet_is_skipped_without_control_image(tiny_dir, tiny_controlnet_dir, engine):
    plain = engine.generate("a", seed=3, output_type="np", **SIZE).images
    with_cn = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu")
    out = with_cn.generate("a", seed=3, output_type="np", **SIZE)
    np.testing.assert_allclose(out.images, plain, atol=1e-6)
    assert out.timings.control_ms == 0.0


def test_a_batch_with_more_prompts_than_the_cache_holds(tiny_dir):
    """Every prompt of a batch larger than the prompt cache gets its own embedding (no endless re-encoding)."""
    from sdxs_core import load_engine

    engine = load_engine(tiny_dir, device="cpu", graphs=False)
    engine._prompt_cache_size = 2
    prompts = [f"prompt number {i}" for i in range(5)] + ["prompt number 1"]
    batch = engine.encode_prompt(prompts)
    alone = torch.cat([engine.encode_prompt([p]) for p in prompts])
    torch.testing.assert_close(batch, alone)
    assert not torch.allclose(batch[0], batch[2]) and len(engine._prompt_cache) == 2
