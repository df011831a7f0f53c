"""The LoRA / ControlNet results table's own measures, checked on real renders whose truth is known."""

from dataclasses import replace

import numpy as np

from benchmarks.miniature_lora_controlnet import controlnet_rows, layout_consistency, style_share
from trainers.miniature import world
from trainers.miniature.classifier import load_classifier


def test_style_and_layout_measures_read_real_renders():
    classifier = load_classifier()
    specs, appearance = world.sample_specs(5, 64, "plain", "eval")
    plain = world.render_specs(specs, appearance)["images"]
    pastel = world.render_specs([replace(s, style="pastel") for s in specs], appearance)["images"]
    assert style_share(classifier, pastel, "pastel") > 0.9 and style_share(classifier, plain, "pastel") < 0.1
    assert layout_consistency(classifier, plain, pastel) > 0.85  # same scenes, other style
    shuffled = np.roll(pastel, 1, axis=0)  # other scenes: objects disagree
    assert layout_consistency(classifier, plain, shuffled) < 0.2


def test_controlnet_rows_prefer_the_shipped_student_controlnet(tmp_path):
    (tmp_path / "assets" / "controlnet-depth").mkdir(parents=True)
    rows = {(r[0], r[3]): r for r in controlnet_rows(tmp_path / "t", tmp_path / "s", tmp_path / "runs", tmp_path / "assets", 25, 5.0)}
    assert rows[("one-step student + ControlNet (depth)", "depth")][2] == tmp_path / "assets" / "controlnet-depth"
    assert rows[("one-step student + ControlNet (edges)", "edges")][2] == tmp_path / "runs" / "controlnet_ssd_edges" / "final"
    assert rows[("teacher + ControlNet (edges)", "edges")][4:] == (25, 5.0)
    assert rows[("one-step student + ControlNet (depth)", "depth")][4:] == (1, 0.0)
