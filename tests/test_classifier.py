import json
import os

import numpy as np
import pytest
import torch

from trainers.miniature import classifier, world

TINY = {"channels": [8, 16, 16, 16], "hidden": 32}


def _spec(text: str, style: str = "plain") -> world.SceneSpec:
    spec = world.parse_caption(text)
    return world.SceneSpec(spec.objects, spec.background, spec.position, spec.relation, style)


def test_targets_use_canonical_order_and_ignore_what_does_not_apply():
    heads = classifier.default_heads()
    below = _spec("a red star below a blue circle on a gray background")
    above = _spec("a blue circle above a red star on a gray background")
    one = _spec("a green heart on the left on a black background", "pastel")
    y = classifier.targets([below, above, one], heads)
    for name in heads:
        assert y[name][0] == y[name][1]
    assert heads["shape1"][y["shape1"][0]] == "circle" and heads["relation"][y["relation"][0]] == "above"
    assert y["position"][0] == -100 and y["shape2"][2] == -100 and y["relation"][2] == -100
    assert heads["position"][y["position"][2]] == "left" and heads["style"][y["style"][2]] == "pastel"


def test_caption_correct_checks_every_stated_attribute():
    pred = _spec("a blue circle above a red star on a gray background", "pastel")
    assert classifier.caption_correct(pred, "a red star below a blue circle on a gray background")
    assert classifier.caption_correct(pred, "a blue circle above a red star on a gray background")
    for wrong in [
        "a red star above a blue circle on a gray background",
        "a blue circle above a red heart on a gray background",
        "a blue circle above an orange star on a gray background",
        "a blue circle to the left of a red star on a gray background",
        "a blue circle above a red star on a pink background",
        "a blue circle at the top on a gray background",
    ]:
        assert not classifier.caption_correct(pred, wrong), wrong


def test_degrade_is_mild_and_seeded():
    images = world.render_batch(0, 16)["images"]
    a = classifier.degrade(images, np.random.default_rng(1))
    b = classifier.degrade(images, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == np.uint8
    diff = np.abs(a.astype(int) - images.astype(int)).mean()
    assert 0 < diff < 12


def test_tiny_training_lowers_the_loss_and_round_trips(tmp_path):
    out = tmp_path / "clf"
    threads = torch.get_num_threads()
    # One thread: on a shared CPU, two threads that wait on each other are slower than one.
    metrics = classifier.train_classifier(str(out), steps=30, batch=32, lr=1e-2, config=TINY, eval_images=64, threads=1, log_every=0)
    assert torch.get_num_threads() == threads
    loss = metrics["loss"]
    assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.25
    assert set(metrics["clean"]) == {*classifier.default_heads(), "caption"}
    assert sorted(os.listdir(out)) == ["config.json", "metrics.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["channels"] == TINY["channels"] and config["heads"] == classifier.default_heads()
    model = classifier.load_classifier(str(out))
    again = classifier.load_classifier(str(out))
    x = classifier.to_input(world.render_batch(4, 8, style="mixed")["images"])
    with torch.no_grad():
        assert model.features(x).shape == (8, TINY["hidden"])
        torch.testing.assert_close(model(x)["colour1"], again(x)["colour1"])


def test_predict_attributes_returns_specs():
    torch.manual_seed(0)
    model = classifier.WorldClassifier(**TINY)
    data = world.render_batch(2, 6, style="mixed")
    preds = classifier.predict_attributes(model, data["images"], batch=4)
    assert len(preds) == 6
    for pred in preds:
        assert isinstance(pred, world.SceneSpec) and pred.style in world.STYLES
        assert world.parse_caption(world.caption(pred)) == pred.attributes()
        assert pred.relation in (None, *classifier.CANONICAL_RELATIONS)


@pytest.mark.skipif(not os.path.isfile(os.path.join(classifier.DEFAULT_DIR, "model.safetensors")), reason="no trained classifier in assets")
def test_trained_classifier_reads_held_out_images():
    model = classifier.load_classifier()
    acc = classifier.evaluate(model, n=256, seed=123)
    low = {name: a for name, a in acc.items() if a < 0.95}
    assert not low, low
