"""The OpenVINO backend against the torch engine on the tiny models: same images (fp32 within 1e-4,
bf16 / int8 / mixed within the tolerances in docs/backends.md), ControlNet and LoRA paths, the disk
cache (hit, damaged entry rebuilt), and the clean refusals."""

import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch

from sdxs_core import load_engine

ov_backend = pytest.importorskip("sdxs_core.openvino_backend")
if not ov_backend.available():
    pytest.skip("openvino is not installed", allow_module_level=True)

BF16 = ov_backend.cpu_supports_bf16()
PROMPT = "a red circle"
# max |difference| of images in [0, 1] against torch fp32 on the tiny random models (docs/backends.md)
TOLERANCE = {"fp32": 1e-4, "bf16": 0.03, "int8": 0.08, "mixed": 0.08}


def images(engine, **kwargs) -> np.ndarray:
    return engine.generate(PROMPT, seed=3, num_images=2, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def torch_engine(tiny_dir, tiny_controlnet_dir):
    return load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="torch")


@pytest.fixture(scope="module")
def ov_fp32(tiny_dir, tiny_controlnet_dir, cache):
    return load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="openvino", precision="fp32",
                       cache_dir=cache)


def test_fp32_equals_torch(torch_engine, ov_fp32):
    assert ov_fp32.backend_label == "openvino fp32" and torch_engine.backend is None
    ref, got = images(torch_engine), images(ov_fp32)
    assert ref.std() > 0.01  # the images are not flat, so equality means something
    assert np.abs(got - ref).max() < TOLERANCE["fp32"]


def test_controlnet_residuals_are_graph_inputs(torch_engine, ov_fp32):
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    ref, got = images(torch_engine, control_image=square), images(ov_fp32, control_image=square)
    assert np.abs(got - ref).max() < TOLERANCE["fp32"]
    assert np.abs(got - images(ov_fp32)).max() > 0.01  # the control image reached the U-Net
    assert {e.network for e in ov_fp32.backend.events} >= {"unet", "unet+control", "decoder"}


def test_controlnet_runs_converted_and_follows_a_switch(tiny_dir, tiny_controlnet_dir, tmp_path, cache):
    """The ControlNet is converted too; its strength is a graph input (moving it converts nothing), and
    attaching another ControlNet converts that one (the old graph must not be reused)."""
    from sdxs_core.loading import load_controlnet
    from sdxs_core.testkit import write_tiny_controlnet

    other = write_tiny_controlnet(tiny_dir, tmp_path / "other", seed=7)
    with torch.no_grad():  # zero-initialised outputs would make every ControlNet look alike
        other_cn = load_controlnet(other, torch.device("cpu"), torch.float32)
        for p in other_cn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    square = np.zeros((64, 64, 3), np.uint8)
    square[8:40, 20:56] = 255
    ov = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="openvino", precision="fp32",
                     cache_dir=cache)
    ref = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="torch")
    assert "controlnet" in {e.network for e in ov.backend.events}
    events = len(ov.backend.events)
    half = images(ov, control_image=square, control_scale=0.5)
    assert len(ov.backend.events) == events  # a new strength converted nothing
    assert np.abs(half - images(ref, control_image=square, control_scale=0.5)).max() < TOLERANCE["fp32"]
    ov.set_controlnet(other_cn)
    ref.set_controlnet(other_cn)
    assert [e.network for e in ov.backend.events[events:]] == ["controlnet"]
    got, want = images(ov, control_image=square), images(ref, control_image=square)
    assert np.abs(got - want).max() < TOLERANCE["fp32"] and np.abs(got - half).max() > 0.01

    def unconvertible(*args):
        raise RuntimeError("conversion failed")

    convert, ov.backend._convert = ov.backend._convert, unconvertible
    broken = load_controlnet(tiny_controlnet_dir, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        next(broken.parameters()).add_(1.0)  # other weights: not in the cache, so it must convert
    with pytest.raises(RuntimeError, match="conversion failed"):
        ov.set_controlnet(broken)
    ov.backend._convert = convert
    assert ov.controlnet is other_cn  # a failed switch keeps the ControlNet that worked
    assert np.abs(images(ov, control_image=square) - want).max() < TOLERANCE["fp32"]


def test_second_load_reads_the_cache(tiny_dir, cache, ov_fp32):
    again = load_engine(tiny_dir, device="cpu", backend="openvino", precision="fp32", cache_dir=cache)
    assert [e.cached for e in again.backend.events] == [True, True]
    assert np.abs(images(again) - images(ov_fp32)).max() < 1e-6


def test_damaged_cache_entry_is_rebuilt(tiny_dir, tmp_path, cache, ov_fp32):
    shutil.copytree(cache, tmp_path / "copy")
    first = load_engine(tiny_dir, device="cpu", backend="openvino", precision="fp32", cache_dir=tmp_path / "copy")
    assert all(e.cached for e in first.backend.events)
    bins = [tmp_path / "copy" / e.entry / "model.bin" for e in first.backend.events]
    data = bins[0].read_bytes()
    bins[0].unlink()
    bins[0].write_bytes(data[: len(data) // 2])  # a half-written file, as after a crash
    with pytest.warns(RuntimeWarning, match="damaged"):
        second = load_engine(tiny_dir, device="cpu", backend="openvino", precision="fp32", cache_dir=tmp_path / "copy")
    assert [e.cached for e in second.backend.events] == [False, True]
    assert bins[0].read_bytes() == data  # rebuilt whole, to the same model
    meta = json.loads((bins[0].parent / "meta.json").read_text())
    assert set(meta["files"]) == {"model.xml", "model.bin"}
    assert np.abs(images(second) - images(first)).max() < 1e-6


def test_lora_is_fused_and_reconverted_on_change(tiny_dir, tiny_lora_file, cache):
    ref = load_engine(tiny_dir, device="cpu", backend="torch", lora=tiny_lora_file)
    ov = load_engine(tiny_dir, device="cpu", backend="openvino", precision="fp32", cache_dir=cache,
                     lora=tiny_lora_file)
    plain = load_engine(tiny_dir, device="cpu", backend="torch")
    assert np.abs(images(ref) - images(plain)).max() > 0.01  # the LoRA changes the image
    assert np.abs(images(ov) - images(ref)).max() < TOLERANCE["fp32"]
    n = len(ov.backend.events)
    for engine in (ref, ov):
        engine.set_lora_scale("lora_0", 0.5)
    new = ov.backend.events[n:]
    assert [e.network for e in new] == ["unet", "decoder"] and not new[0].cached and new[0].seconds > 0
    assert np.abs(images(ov) - images(ref)).max() < TOLERANCE["fp32"]
    ov.unload_lora()
    assert np.abs(images(ov) - images(plain)).max() < TOLERANCE["fp32"]
    assert ov.backend.events[-2].cached  # back to the plain U-Net: its entry was already on disk


@pytest.mark.parametrize("precision", ["bf16", "int8", "mixed"])
def test_low_precision_within_tolerance(precision, tiny_dir, tiny_controlnet_dir, tiny_lora_file, torch_engine, cache):
    if precision == "bf16" and not BF16:
        pytest.skip("this CPU has no bf16 instructions")
    controlnet = tiny_controlnet_dir if precision == "bf16" else None  # int8 calibrates each network: keep it short
    engine = load_engine(tiny_dir, controlnet=controlnet, device="cpu", backend="openvino", precision=precision,
                         cache_dir=cache)
    err = np.abs(images(engine) - images(torch_engine)).max()
    assert 0 < err < TOLERANCE[precision]  # lower precision: close, and not secretly fp32
    if precision != "bf16":
        stored = {e.network: e.precision for e in engine.backend.events}
        assert stored["decoder"] == stored["unet"] == "int8"
    if precision == "mixed":  # a LoRA re-calibrates the int8 U-Net, and the decoder on its latents
        engine.load_lora(tiny_lora_file, scale=0.5)
        assert not engine.backend.events[-1].cached and engine.backend.events[-1].network == "decoder"


def test_int8_with_controlnet_calibrates_on_real_control_maps(tiny_dir, tiny_controlnet_dir, torch_engine, cache,
                                                             monkeypatch):
    """The U-Net that takes ControlNet residuals is calibrated on residuals of line, grey and blank maps
    made from the model's own images (a blank map alone under-ranges them), and stays within tolerance."""
    seen = []
    residuals = ov_backend.OpenVINOBackend._control_residuals
    monkeypatch.setattr(ov_backend.OpenVINOBackend, "_control_residuals",
                        staticmethod(lambda engine, item, cond: seen.append(cond) or residuals(engine, item, cond)))
    engine = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="openvino",
                         precision="int8", cache_dir=cache)
    n = ov_backend.CALIBRATION_SIZE
    assert len(seen) == n and all(c.shape == (1, 3, 64, 64) and 0 <= c.min() <= c.max() <= 1 for c in seen)
    kinds = ov_backend.CONTROL_CALIBRATION_MAPS
    lines = [c for c, k in zip(seen, kinds * n) if k in ("canny", "sketch")]
    assert all(set(c.unique().tolist()) <= {0.0, 1.0} and c.max() == 1 for c in lines)  # white lines on black
    assert all(c.max() == 0 for c, k in zip(seen, kinds * n) if k == "blank")
    assert len({round(c.mean().item(), 4) for c in seen}) >= 5  # maps of different images, not one map
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    got, ref = images(engine, control_image=square), images(torch_engine, control_image=square)
    assert 0 < np.abs(got - ref).max() < TOLERANCE["int8"]
    assert {e.network: e.precision for e in engine.backend.events}["unet+control"] == "int8"


def test_int8_unet_with_residuals_follows_a_controlnet_switch(tiny_dir, tiny_controlnet_dir, tmp_path, cache):
    """Calibrated on the attached ControlNet's residuals, so another ControlNet calibrates it again (never
    the old one's ranges from memory or the cache), and the first one back reads it from the cache."""
    from sdxs_core.loading import load_controlnet
    from sdxs_core.testkit import write_tiny_controlnet

    other = write_tiny_controlnet(tiny_dir, tmp_path / "other", seed=11)
    with torch.no_grad():
        other_cn = load_controlnet(other, torch.device("cpu"), torch.float32)
        for p in other_cn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", backend="openvino",
                         precision="mixed", cache_dir=cache)
    first_cn = engine.controlnet
    events = len(engine.backend.events)
    engine.set_controlnet(other_cn)
    switched = engine.backend.events[events:]
    assert [(e.network, e.precision, e.cached) for e in switched] == [
        ("controlnet", "bf16" if BF16 else "fp32", False), ("unet+control", "int8", False)]
    events = len(engine.backend.events)
    engine.set_controlnet(first_cn)
    assert [(e.network, e.cached) for e in engine.backend.events[events:]] == [("controlnet", True),
                                                                               ("unet+control", True)]


def _quantised(engine, op_type: str = "Convolution", network: str = "unet") -> dict[str, bool]:
    """Each op of that type in a stored OpenVINO network: whether an input is int8 (a FakeQuantize)."""
    (model,) = [net.model for (kind, _), net in engine.backend._networks.items() if kind == network]
    return {op: any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())
            for op in model.get_ops() if op.get_type_name() == op_type}


def test_int8_keeps_the_networks_first_and_last_layers_in_float(tiny_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nncf"):
        engine = load_engine(tiny_dir, device="cpu", backend="openvino", precision="int8", cache_dir=tmp_path)
    assert not [r for r in caplog.records if r.name.startswith("nncf") and r.levelno < logging.WARNING]
    engine.generate(PROMPT, seed=0, output_type="np")
    convs = {op.get_friendly_name(): q for op, q in _quantised(engine).items()}
    ends = {n: q for n, q in convs.items() if ".conv_in/" in n or ".conv_out/" in n}
    assert len(ends) == 2 and not any(ends.values())
    assert sum(convs.values()) >= len(convs) // 2  # the rest of the U-Net is int8
    decoder = [(tuple(op.get_input_partial_shape(1).to_shape())[:2], q)
               for op, q in _quantised(engine, network="decoder").items()]
    ends = [q for (out_channels, in_channels), q in decoder if in_channels == 4 or out_channels == 3]
    assert len(ends) == 2 and not any(ends)  # the decoder's first (4 latent channels in) and last (RGB out)
    assert sum(q for _, q in decoder) == len(decoder) - 2 > 0


def test_mixed_keeps_attention_in_float_and_the_resnets_int8(tiny_dir, cache):
    engine = load_engine(tiny_dir, device="cpu", backend="openvino", precision="mixed", cache_dir=cache)
    engine.generate(PROMPT, seed=0, output_type="np")
    ops = {op.get_friendly_name(): q for t in ("Convolution", "MatMul") for op, q in _quantised(engine, t).items()}
    attention = {n: q for n, q in ops.items() if ".attentions." in n}
    resnets = {n: q for n, q in ops.items() if ".resnets." in n and "time_emb_proj" not in n}
    assert len(attention) >= 4 and not any(attention.values())
    assert len(resnets) >= 4 and all(resnets.values())
    assert not any(q for n, q in ops.items() if ".conv_in/" in n or ".conv_out/" in n)


def test_bf16_refused_without_cpu_support(monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="bf16 instructions"):
        ov_backend.OpenVINOBackend(precision="bf16")
    assert ov_backend.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(ov_backend, "cpu_supports_bf16", lambda: True)
    assert ov_backend.resolve_precision("auto") == "mixed"  # the fastest path within the quality bound
    with pytest.raises(ValueError, match="precision='fp16'"):
        ov_backend.resolve_precision("fp16")


def test_auto_backend_picks_by_device_and_dtype(tiny_dir, cache):
    from sdxs_core.loading import resolve_backend

    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, torch.float32) == "openvino"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "torch"  # --dtype bf16 keeps torch
    assert resolve_backend("auto", torch.device("cuda"), torch.float16) == "torch"
    engine = load_engine(tiny_dir, device="cpu", dtype="bf16", backend="auto", cache_dir=cache)
    assert engine.backend is None and engine.backend_label == "torch bf16"
    assert engine.generate(PROMPT, seed=1, output_type="np").images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="fp32 weights"):
        load_engine(tiny_dir, device="cpu", dtype="bf16", backend="openvino")
    with pytest.raises(ValueError, match="backend='onnx'"):
        load_engine(tiny_dir, device="cpu", backend="onnx")


def test_absent_openvino_is_a_clear_error(monkeypatch, tiny_dir):
    from sdxs_core.loading import resolve_backend

    monkeypatch.setattr(ov_backend, "available", lambda: False)
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(ValueError, match="needs the openvino package"):
        resolve_backend("openvino", torch.device("cpu"), torch.float32)


def test_multi_step_teacher_stays_torch(ov_fp32, torch_engine):
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0)
    assert np.abs(images(ov_fp32, **kwargs) - images(torch_engine, **kwargs)).max() < 1e-5


def test_cli_backend_and_precision(tiny_dir, tmp_path, cache, ov_fp32, capsys):
    from sdxs_core.cli import main

    args = ["generate", "--model", str(tiny_dir), "--prompt", PROMPT, "--out", str(tmp_path / "x.png"), "--seed", "1"]
    assert main([*args, "--backend", "openvino", "--precision", "fp32", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "openvino fp32" in out and "read from the cache" in out
    assert main([*args, "--backend", "torch"]) == 0
    assert "cpu, torch fp32" in capsys.readouterr().out


def test_app_hub_shows_backend_and_lora_conversion_time(tiny_dir, tiny_lora_file, cache, ov_fp32, tmp_path):
    from sdxs_core.hub import ModelHub

    hub = ModelHub(search_dirs=[tmp_path], device="cpu", outputs=tmp_path, backend="openvino", precision="fp32",
                   cache_dir=str(cache))
    key = hub.register(str(tiny_dir))
    notice = hub.load_model(key)
    assert "openvino fp32" in notice and "read from its cache" in notice
    assert "openvino fp32" in hub.status()
    lora = hub.register(str(tiny_lora_file), kind="lora")
    notice = hub.set_lora(lora, 0.7)
    assert re.search(r"OpenVINO: unet converted in \d+\.\d s", notice), notice
    failed = hub.set_lora("no-such-lora")
    assert hub.lora_key == lora and "no-such-lora" in failed  # a failed switch keeps the LoRA


def test_batches_share_one_dynamic_compile(ov_fp32, torch_engine):
    """Batch 1 has its own static compile; batches 2, 3 and 5 share one, and each row is the image the
    torch engine makes for that seed."""
    for n in (2, 3, 5):
        got = ov_fp32.generate(PROMPT, seed=4, num_images=n, output_type="np").images
        ref = torch_engine.generate(PROMPT, seed=4, num_images=n, output_type="np").images
        assert got.shape[0] == n and np.abs(got - ref).max() < TOLERANCE["fp32"]
    nets = {kind: net for (kind, _), net in ov_fp32.backend._networks.items()}
    assert sum(k == "batch" for k in nets["unet"].compiled) == 1 and len(nets["unet"].compiled) == 2
    assert list(nets["decoder"].compiled).count("batch") == 1 and len(nets["decoder"].compiled) == 2
