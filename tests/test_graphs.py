"""Traced one-step graphs (sdxs_core.graphs): same images as the eager networks, traced once per
shape, and never stale after a ControlNet, LoRA or scale change."""

import warnings

import numpy as np
import pytest
import torch

from sdxs_core import load_engine
from sdxs_core.graphs import GraphCache

SIZE = dict(height=64, width=64)


@pytest.fixture()
def pair(tiny_dir, tiny_controlnet_dir):
    """The same model twice: traced graphs and eager."""
    traced = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", graphs=True)
    eager = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu", graphs=False)
    return traced, eager


def _control(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((64, 64, 3)) > 0.8).astype(np.uint8) * 255


def _both(pair, prompt="a", **kw):
    return [e.generate(prompt, seed=5, output_type="np", **SIZE, **kw).images for e in pair]


def test_graphs_are_default_on_cpu_and_match_eager(pair, tiny_dir):
    assert load_engine(tiny_dir, device="cpu").graphs is not None
    traced, eager = pair
    assert eager.graphs is None
    for scale in (1.0, 0.3):  # the scale is a graph input, not a baked constant
        a, b = _both(pair, control_image=_control(), control_scale=scale)
        np.testing.assert_allclose(a, b, atol=1e-5)
    a, b = _both(pair)  # text-to-image: the U-Net without residuals is its own graph
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ControlNet, U-Net with residuals, U-Net without, decoder: four graphs, none traced twice
    assert traced.graphs.traces == 4 and len(traced.graphs) == 4


def test_new_shape_traces_anew_and_multi_step_stays_eager(pair):
    traced, eager = pair
    _both(pair)
    traces = traced.graphs.traces
    a, b = [e.generate(["a", "b"], seed=1, output_type="np", **SIZE).images for e in pair]  # batch 2
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert traced.graphs.traces == traces + 2  # U-Net and decoder for the new batch shape
    traces = traced.graphs.traces
    a, b = [e.generate("a", seed=1, num_inference_steps=3, guidance_scale=2.0, output_type="np", **SIZE).images
            for e in pair]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert traced.graphs.traces == traces


def test_lora_and_controlnet_changes_drop_stale_graphs(pair, tiny_lora_file, tiny_dir, tmp_path):
    from sdxs_core.loading import load_controlnet
    from sdxs_core.testkit import write_tiny_controlnet

    traced, eager = pair
    before = _both(pair)[0]
    for e in pair:
        e.load_lora(tiny_lora_file, scale=1.0, adapter_name="style")
    a, b = _both(pair)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - before).max() > 1e-3  # the LoRA is in the traced graph, not the old weights
    for e in pair:
        e.set_lora_scale("style", 0.0)
    a, b = _both(pair)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, before, atol=1e-5)

    other = write_tiny_controlnet(tiny_dir, tmp_path / "cn2", seed=7)
    old = _both(pair, control_image=_control())[0]
    for e in pair:
        e.set_controlnet(load_controlnet(other, torch.device("cpu"), torch.float32))
    a, b = _both(pair, control_image=_control())
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - old).max() > 1e-3


def test_untraceable_network_runs_eagerly_with_one_warning():
    class Untraceable(torch.nn.Module):
        def decode(self, z, return_dict=False):
            return (z.numpy() * 2,)  # a numpy round trip cannot be traced

    cache, vae, z = GraphCache(), Untraceable(), torch.ones(1, 4, 2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cache.decode(vae, z)
        again = cache.decode(vae, z)  # the failure is remembered: no second trace, no second warning
    for result in (out, again):
        assert isinstance(result, np.ndarray) and float(result.max()) == 2.0  # the eager result
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        next(str(w.message) for w in caught if "eagerly" in str(w.message))]
    assert cache.traces == 1


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def test_repeated_rebuilds_reuse_graphs_and_memory_stays_bounded(tiny_dir, tiny_controlnet_dir, tiny_lora_file,
                                                                 tmp_path):
    """The app's switches (LoRA scale, ControlNet, Images slider) cycled: after one round every state
    has its graph, so further rounds trace nothing and the process does not grow (TorchScript never
    frees a trace: each one retraced cost ~10 MB even on this tiny model)."""
    import gc

    from sdxs_core.loading import load_controlnet
    from sdxs_core.testkit import write_tiny_controlnet

    engine = load_engine(tiny_dir, device="cpu", graphs=True)
    nets = [load_controlnet(p, torch.device("cpu"), torch.float32)
            for p in (tiny_controlnet_dir, write_tiny_controlnet(tiny_dir, tmp_path / "cn2", seed=7))]
    engine.load_lora(tiny_lora_file, scale=1.0, adapter_name="style")

    def one_round():
        for scale, net in ((0.5, nets[0]), (1.0, nets[1])):
            engine.set_lora_scale("style", scale)
            engine.set_controlnet(net)
            for n in (1, 3, 4, 8):  # 3 is padded to 4: one graph for both
                engine.generate(["a"] * n, seed=1, output_type="np", **SIZE)
            engine.generate("a", seed=1, control_image=_control(), output_type="np", **SIZE)
        gc.collect()

    one_round()
    traces, rss = engine.graphs.traces, _rss_mb()
    for _ in range(3):
        one_round()
    assert _rss_mb() - rss < 20, f"RSS grew {_rss_mb() - rss:.0f} MB over 3 rounds of the same switches"
    assert engine.graphs.traces == traces


def test_the_same_lora_under_a_new_adapter_name_reuses_its_graph(tiny_dir, tiny_lora_file):
    """The hub loads every LoRA switch under a fresh adapter name (so a failed switch keeps the old
    one): switching away and back must find the graph already traced, not trace (and leak) anew."""
    engine = load_engine(tiny_dir, device="cpu", graphs=True)
    engine.load_lora(tiny_lora_file, scale=1.0, adapter_name="studio-1")
    first = engine.generate("a", seed=1, output_type="np", **SIZE).images
    engine.unload_lora("studio-1")
    engine.generate("a", seed=1, output_type="np", **SIZE)  # the no-LoRA state: its own graph
    traces = engine.graphs.traces
    engine.load_lora(tiny_lora_file, scale=1.0, adapter_name="studio-2")
    again = engine.generate("a", seed=1, output_type="np", **SIZE).images
    assert engine.graphs.traces == traces
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_padded_batches_match_eager_and_share_a_graph(pair):
    from sdxs_core.graphs import padded_batch

    assert [padded_batch(n) for n in (1, 2, 3, 5, 8, 9, 16, 20)] == [1, 2, 4, 8, 8, 16, 16, 20]
    traced, eager = pair
    a, b = [e.generate(["a", "b", "c"], seed=1, output_type="np", **SIZE).images for e in pair]
    assert a.shape[0] == 3
    np.testing.assert_allclose(a, b, atol=1e-5)
    traces = traced.graphs.traces
    traced.generate(["a"] * 4, seed=1, output_type="np", **SIZE)
    assert traced.graphs.traces == traces  # 4 runs on the graph 3 was padded to


def test_trace_budget_bounds_traces_then_runs_eagerly(pair):
    traced, eager = pair
    traced.graphs.trace_budget = traced.graphs.traces  # spent: new shapes run eagerly
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = traced.generate(["a", "b"], seed=1, output_type="np", **SIZE).images
    b = eager.generate(["a", "b"], seed=1, output_type="np", **SIZE).images
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert any("eagerly" in str(w.message) for w in caught)
