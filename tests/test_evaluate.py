import json
import math
import os

import numpy as np
import pytest

from trainers.miniature import evaluate, world
from trainers.miniature.classifier import DEFAULT_DIR

needs_classifier = pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_DIR, "model.safetensors")),
                                      reason="the trained classifier (assets/miniature/classifier) is missing")


@pytest.fixture(scope="module")
def classifier():
    from trainers.miniature.classifier import load_classifier

    return load_classifier()


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_mean_shift():
    a = np.random.default_rng(0).normal(size=(400, 8))
    assert evaluate.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = [evaluate.frechet_distance(a, a + d) for d in (0.5, 1.0, 2.0)]
    assert shifted == pytest.approx([8 * d**2 for d in (0.5, 1.0, 2.0)], rel=1e-6)  # |mean shift|^2 on 8 dims
    b = np.random.default_rng(1).normal(size=(400, 8))
    assert 0 < evaluate.frechet_distance(a, b) < shifted[0]
    # fewer samples than dimensions: singular covariances still give a finite, non-negative distance
    few = np.random.default_rng(2).normal(size=(10, 32))
    assert math.isfinite(evaluate.frechet_distance(few, few[::-1] + 0.1))
    with pytest.raises(ValueError, match="feature sets"):
        evaluate.frechet_distance(a, a[:, :4])


def test_frechet_distance_matches_the_scipy_sqrtm_formula():
    from scipy import linalg

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 24)), rng.gamma(2.0, size=(30, 24))  # fewer samples than dims: singular
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    diff = a.mean(0) - b.mean(0)
    reference = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean).real
    assert evaluate.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_edge_f1_identical_shifted_and_disjoint():
    target = np.zeros((32, 32), np.uint8)
    target[8:24, 8] = target[8:24, 23] = target[8, 8:24] = target[23, 8:24] = 255
    assert evaluate.edge_f1(target, target) == 1.0
    shifted = np.roll(target, 1, axis=1)
    assert evaluate.edge_f1(shifted, target, tolerance=1) == 1.0
    assert evaluate.edge_f1(shifted, target, tolerance=0) < 0.6
    disjoint = np.zeros_like(target)
    disjoint[0, :4] = 255
    assert evaluate.edge_f1(disjoint, target) == pytest.approx(0, abs=1e-9)
    assert evaluate.edge_f1(np.zeros_like(target), target) == 0.0
    assert evaluate.edge_f1(np.stack([target, target]), np.stack([target, np.zeros_like(target)])) == 0.5


def test_world_edge_extractor_matches_world_edges():
    real = world.render_batch(3, 32, split="eval")
    extracted = evaluate.image_edges(real["images"])
    assert evaluate.edge_f1(extracted, real["edges"], tolerance=1) > 0.95
    other = world.render_batch(4, 32, split="eval")["edges"]
    assert evaluate.edge_f1(extracted, other, tolerance=1) < 0.5


def test_depth_correlation_sanity():
    rng = np.random.default_rng(0)
    a = rng.random((4, 16, 16))
    assert evaluate.depth_correlation(a, a) == pytest.approx(1)
    assert evaluate.depth_correlation(a, 2 * a + 3) == pytest.approx(1)
    assert evaluate.depth_correlation(a, 1 - a) == pytest.approx(-1)
    assert abs(evaluate.depth_correlation(rng.random((64, 64, 64)), rng.random((64, 64, 64)))) < 0.01
    assert evaluate.depth_correlation(a[0], a[0]) == pytest.approx(1)
    assert math.isnan(evaluate.depth_correlation(np.ones((2, 8, 8)), a[:2, :8, :8]))  # constant: undefined


def test_reference_set_renders_the_exact_captions_with_fresh_geometry():
    prompts = world.eval_prompts(6, seed=1)
    a, b = evaluate.reference_set(prompts, 0), evaluate.reference_set(prompts, 1)
    assert a["captions"] == prompts and b["captions"] == prompts
    assert all(s.style == "plain" and s.objects[0].centre is not None for s in a["specs"])
    assert not np.array_equal(a["images"], b["images"])
    maps = evaluate.control_maps(a, "depth")
    assert len(maps) == 6 and maps[0].shape == (64, 64, 3) and maps[0].dtype == np.uint8
    assert set(np.unique(evaluate.control_maps(a, "edges")[0])) == {0, 255}


@needs_classifier
def test_real_images_score_high_and_noise_scores_zero(classifier):
    prompts = world.eval_prompts(64, seed=0)
    real = evaluate.reference_set(prompts, 0)
    as_engine_output = real["images"].astype(np.float32) / 255  # the engine's float [0, 1] output
    scored = evaluate.read_images(classifier, as_engine_output, prompts)
    assert scored["prompt_accuracy"] >= 0.9
    noise = np.random.default_rng(0).random((64, 64, 64, 3)).astype(np.float32)
    noisy = evaluate.read_images(classifier, noise, prompts)
    assert noisy["prompt_accuracy"] <= 0.05
    other = evaluate.read_images(classifier, evaluate.reference_set(prompts, 1)["images"], prompts)
    assert evaluate.frechet_distance(scored["features"], other["features"]) < evaluate.frechet_distance(noisy["features"], other["features"]) / 10


def _check_result(result):
    for key in ("prompt_accuracy", "mfid", "real_vs_real_mfid", "diversity", "real_diversity", "latency_ms",
                "latency_ms_batch1", "real_prompt_accuracy"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert 0 <= result["prompt_accuracy"] <= 1 and result["mfid"] >= 0
    assert set(result["attribute_accuracy"]) == {"count", "shapes", "colours", "layout", "background"}
    assert json.loads(json.dumps(result)) == result  # plain JSON types only


@needs_classifier
def test_evaluate_model_end_to_end_on_the_tiny_pipeline(tiny_dir, classifier, tmp_path):
    from sdxs_core import load_engine

    engine = load_engine(tiny_dir, device="cpu")
    result = evaluate.evaluate_model(engine, n=4, steps=1, cfg=0.0, seeds_per_prompt=2, batch=3,
                                     classifier=classifier, latency_calls=1, name="tiny")
    _check_result(result)
    assert result["model"] == "tiny" and result["nfe"] == 1 and result["n_prompts"] == 2
    assert result["edge_f1"] is None and result["depth_correlation"] is None
    out = tmp_path / "sub" / "result.json"
    evaluate.write_json(result, out)
    assert json.loads(out.read_text()) == result and os.listdir(out.parent) == ["result.json"]
    assert "prompt accuracy" in evaluate.format_table(result)
    with pytest.raises(ValueError, match="multiple of seeds_per_prompt"):
        evaluate.evaluate_model(engine, n=5, seeds_per_prompt=2, classifier=classifier)
    with pytest.raises(ValueError, match="ControlNet"):
        evaluate.evaluate_model(engine, n=4, control_type="edges", classifier=classifier)


@needs_classifier
def test_evaluate_model_with_control(tiny_dir, tiny_controlnet_dir, classifier):
    from sdxs_core import load_engine

    engine = load_engine(tiny_dir, controlnet=tiny_controlnet_dir, device="cpu")
    edges = evaluate.evaluate_model(engine, n=2, steps=2, cfg=2.0, seeds_per_prompt=1, control_type="edges",
                                    classifier=classifier, latency_calls=1)
    assert edges["nfe"] == 4 and edges["diversity"] is None
    assert 0 <= edges["edge_f1"] <= 1 and edges["real_edge_f1"] > 0.9
    off = evaluate.evaluate_model(engine, n=2, steps=2, cfg=2.0, seeds_per_prompt=1, control_type="edges",
                                  control_scale=0.0, classifier=classifier, latency_calls=0)
    assert (edges["control_scale"], off["control_scale"]) == (1.0, 0.0)
    assert off["mfid"] != edges["mfid"]  # the scale reaches the ControlNet: other images
    grey = lambda images: images.astype(np.float32).mean(-1)  # noqa: E731  a stand-in depth estimator
    depth = evaluate.evaluate_model(engine, n=2, seeds_per_prompt=1, control_type="depth", depth_estimator=grey,
                                    classifier=classifier, latency_calls=1)
    assert depth["edge_f1"] is None
    assert depth["depth_correlation"] is None or -1 <= depth["depth_correlation"] <= 1


def test_cli_rejects_a_controlnet_without_a_type(tiny_dir, tiny_controlnet_dir):
    with pytest.raises(SystemExit):
        evaluate.main(["--model", str(tiny_dir), "--controlnet", str(tiny_controlnet_dir)])


def test_cli_reads_depth_with_the_world_depth_estimator(tiny_dir, tiny_controlnet_dir, tmp_path, monkeypatch):
    """--control-type depth used to report no depth correlation: the CLI passed no estimator."""
    from sdxs_core.depth import MiniatureDepth

    seen = []

    class StandIn:
        def estimate_batch(self, images):
            seen.append(np.asarray(images).shape)
            return np.asarray(images, dtype=np.float32)[..., 0] + np.arange(images.shape[2], dtype=np.float32)

    monkeypatch.setattr(MiniatureDepth, "load", classmethod(lambda cls, *a, **k: StandIn()))
    out = tmp_path / "depth.json"
    evaluate.main(["--model", str(tiny_dir), "--controlnet", str(tiny_controlnet_dir), "--control-type", "depth",
                   "--n", "2", "--seeds-per-prompt", "1", "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    assert seen and seen[0][0] == 2 and seen[0][-1] == 3  # the two generations, as HxWx3 images
    assert result["depth_correlation"] is not None and -1 <= result["depth_correlation"] <= 1
