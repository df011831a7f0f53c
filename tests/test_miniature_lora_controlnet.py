"""The LoRA / ControlNet results table's own measures, checked on real renders whose truth is known."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.miniature_lora_controlnet import (controlnet_rows, layout_changes, layout_consistency, lora_rows,
                                                  markdown_tables, style_share)
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


def test_layout_changes_name_the_part_that_changed():
    classifier = load_classifier()
    specs, appearance = world.sample_specs(5, 64, "plain", "eval")
    plain = world.render_specs(specs, appearance)["images"]
    shapes = list(world.SHAPES)
    reshaped = [replace(s, style="pastel", objects=tuple(replace(o, shape=shapes[(shapes.index(o.shape) + 1) % len(shapes)])
                                                         for o in s.objects)) for s in specs]
    changes = layout_changes(classifier, plain, world.render_specs(reshaped, appearance)["images"])
    assert changes["shapes"] > 0.8 and changes["any"] >= changes["shapes"]
    assert changes["count"] < 0.1 and changes["colours"] < 0.2 and changes["placement"] < 0.2


def test_controlnet_rows_prefer_the_shipped_student_controlnet(tmp_path):
    (tmp_path / "assets" / "controlnet-depth").mkdir(parents=True)
    rows = {(r[0], r[3]): r for r in controlnet_rows(tmp_path / "t", tmp_path / "s", tmp_path / "runs", tmp_path / "assets", 25, 5.0)}
    assert rows[("one-step student + ControlNet (depth)", "depth")][2] == tmp_path / "assets" / "controlnet-depth"
    assert rows[("one-step student + ControlNet (edges)", "edges")][2] == tmp_path / "runs" / "controlnet_ssd_edges" / "final"
    assert rows[("teacher + ControlNet (edges)", "edges")][4:] == (25, 5.0, tmp_path / "t", 1.0)
    tiny = rows[("one-step student + ControlNet (depth)", "depth")]
    assert tiny[4:] == (1, 0.0, tmp_path / "s", 1.0)  # its tiny decoder
    vae = rows[("one-step student + ControlNet (depth), VAE decoder", "depth")]
    assert vae[1:] == (tmp_path / "s", tmp_path / "assets" / "controlnet-depth", "depth", 1, 0.0, tmp_path / "t", 1.0)


def test_controlnet_rows_add_student_rows_per_control_scale(tmp_path):
    rows = controlnet_rows(tmp_path / "t", tmp_path / "s", tmp_path / "runs", tmp_path / "assets", 25, 5.0,
                           student_scales=(1.0, 1.5))
    scaled = {r[0]: r[7] for r in rows if r[3] == "edges" and r[7] != 1.0}
    assert scaled == {"one-step student + ControlNet (edges), control scale 1.5": 1.5,
                      "one-step student + ControlNet (edges), VAE decoder, control scale 1.5": 1.5}
    assert [r[7] for r in rows if r[0].startswith("teacher")] == [1.0, 1.0]  # the teacher's reference stays at 1


def test_controlnet_rows_take_the_controlnets_of_the_named_student(tmp_path):
    for name in ("controlnet-edges", "controlnet-edges-sd4"):
        (tmp_path / "assets" / name).mkdir(parents=True)
    rows = controlnet_rows(tmp_path / "t", tmp_path / "s", tmp_path / "runs", tmp_path / "assets", 25, 5.0, "-sd4")
    students = {r[2] for r in rows if r[0].startswith("one-step student") and r[3] == "edges"}
    assert students == {tmp_path / "assets" / "controlnet-edges-sd4"}  # never the other student's


class RenderingEngine:
    """Draws each held-out prompt's true scene, pastel while a LoRA is loaded: a perfect style LoRA."""

    def __init__(self, n_prompts: int):
        specs, appearance = world.sample_specs(0, n_prompts, "plain", "eval")
        self.scenes = {world.caption(s): (s, a) for s, a in zip(specs, appearance)}
        self.lora, self.calls = None, []

    def generate(self, prompts, seed, num_inference_steps, guidance_scale, output_type):
        self.calls.append((len(prompts), num_inference_steps, guidance_scale))
        style = "pastel" if self.lora else "plain"
        specs = [replace(self.scenes[p][0], style=style) for p in prompts]
        images = world.render_specs(specs, np.stack([self.scenes[p][1] for p in prompts]))["images"]
        return SimpleNamespace(images=images.astype(np.float32) / 255, timings=SimpleNamespace(total_ms=2.0 * len(prompts)))

    def load_lora(self, path, scale):
        self.lora = path
        return "style"

    def unload_lora(self, name):
        assert name == "style"
        self.lora = None


def test_lora_rows_score_a_model_with_the_lora_off_and_on():
    n = 32
    engine = RenderingEngine(n // 4)
    (off, on, half), off_images = lora_rows(engine, Path("lora.safetensors"), load_classifier(), n, scales=(1.0, 0.5),
                                            batch=16, steps=25, cfg=5.0, label="teacher")
    assert engine.calls == [(16, 25, 5.0)] * 6 and engine.lora is None  # off, then on per scale; LoRA unloaded
    assert (off["model"], on["model"], half["model"]) == ("teacher", "teacher + style LoRA (1)", "teacher + style LoRA (0.5)")
    assert (on["lora_scale"], half["lora_scale"]) == (1.0, 0.5) and off_images.shape == (n, 64, 64, 3)
    assert off["nfe"] == on["nfe"] == 50 and on["cfg"] == 5.0
    assert off["style_accuracy"] < 0.1 and on["style_accuracy"] > 0.9
    assert on["layout_consistency"] > 0.85 and "layout_consistency" not in off
    assert on["layout_changes"]["any"] == 1 - on["layout_consistency"]
    assert off["prompt_accuracy"] > 0.8 and on["prompt_accuracy"] > 0.8
    assert off["latency_ms"] == on["latency_ms"] == 2.0
    table = markdown_tables({"controlnet_rows": [], "lora_rows": [off, on], "decoder_swap_consistency": 0.754})
    assert "decoder swap" in table and "75.4%" in table
    assert f"{on['layout_changes']['shapes']:.1%} / {on['layout_changes']['colours']:.1%}" in table
