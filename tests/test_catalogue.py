"""The model list as a user meets it: each model once, multi-step teachers marked and kept out of the
one-step list, and only the style presets that mean something to the loaded model's family."""

import json
import shutil

import pytest

from sdxs_core import catalogue
from sdxs_core.catalogue import STYLES, TEACHER_STEPS, discover, family_of, steps_of, styles_for
from sdxs_core.hub import ModelHub, TextRequest, text_to_image
from sdxs_core.presets import ASSETS, PRESETS, Preset


def make_teacher(tiny_dir, folder):
    """The tiny pipeline with a multi-step sampler, as the miniature teachers ship (DPM-Solver)."""
    shutil.copytree(tiny_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": "DPMSolverMultistepScheduler"}))
    return folder


@pytest.fixture()
def models(tmp_path, tiny_dir):
    """A models folder with a one-step model (also named by a preset and reached through a link) and a teacher."""
    root = tmp_path / "models"
    shutil.copytree(tiny_dir, root / "student")
    (root / "same-student").symlink_to(root / "student", target_is_directory=True)
    make_teacher(tiny_dir, root / "teacher")
    return root


def test_each_model_is_offered_once_under_its_preset_name(models, monkeypatch):
    monkeypatch.setitem(PRESETS, "my-student", Preset("my-student", str(models / "student"), "pipeline", "miniature",
                                                      "a preset naming a folder that the scan finds too"))
    keys = [e.key for e in discover([models]) if e.kind == "pipeline"]
    assert "my-student" in keys
    assert "models/student" not in keys and "models/same-student" not in keys  # the preset's folder, twice more
    assert "models/teacher" in keys


def test_the_operator_naming_an_offered_folder_gets_its_entry_not_a_second_one(models, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PRESETS", {})
    hub = ModelHub(search_dirs=[models], device="cpu", outputs=tmp_path / "outputs")
    before = hub.choices("pipeline")
    assert [key for _, key in before] == ["models/student"]  # the link is the same folder; the teacher is left out
    assert hub.register(str(models / "same-student")) == "models/student"
    assert hub.choices("pipeline") == before


@pytest.mark.skipif(not (ASSETS / "miniature" / "teacher" / "unet").is_dir(), reason="assets/miniature missing")
def test_the_bundled_models_are_listed_once_and_the_teachers_marked():
    entries = {e.key: e for e in discover([ASSETS]) if e.kind == "pipeline"}
    assert not any(key.startswith("assets/miniature/sdxs") for key in entries)  # miniature, miniature-sd4(-fast)
    assert {"miniature", "miniature-sd4", "miniature-sd4-fast"} <= set(entries)
    for teacher in ("assets/miniature/teacher", "assets/miniature/teacher-sd4"):
        assert entries[teacher].steps == TEACHER_STEPS
        assert entries[teacher].label == f"{teacher} (teacher, {TEACHER_STEPS} steps)"
    assert {e.steps for k, e in entries.items() if "teacher" not in k} == {1}


def test_teachers_are_marked_left_out_of_the_list_and_refused_keeping_the_loaded_model(models, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PRESETS", {})
    assert steps_of(models / "student") == 1 and steps_of(models / "teacher") == TEACHER_STEPS
    hub = ModelHub(search_dirs=[models], device="cpu", outputs=tmp_path / "outputs")
    teacher = hub.lookup("pipeline", "models/teacher")
    assert teacher.label == f"models/teacher (teacher, {TEACHER_STEPS} steps)"
    assert "models/teacher" not in [key for _, key in hub.choices("pipeline")]
    hub.load_model("models/student")
    notice = hub.load_model("models/teacher")
    assert "multi-step teacher" in notice and "not offered" in notice and "Still using **models/student**" in notice
    assert hub.model_key == "models/student"


def test_the_operator_may_still_load_a_teacher_and_is_told_what_to_expect(models, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PRESETS", {})
    hub = ModelHub(search_dirs=[], device="cpu", outputs=tmp_path / "outputs")
    key = hub.register(str(models / "teacher"))
    assert "Loaded" in hub.load_model(key) and hub.model_key == key
    assert key in [k for _, k in hub.choices("pipeline")]  # the loaded one stays in the list
    assert "multi-step teacher" in hub.status() and "noise smear" in hub.status()


def test_style_presets_follow_the_family(tmp_path):
    assert styles_for("miniature") == styles_for("miniature-sd4") == ("none",)
    assert styles_for("sd1.5") == styles_for("sd2.1") == styles_for("") == tuple(STYLES)
    for name in ("sdxs-512-dreamshaper", "sdxs-512-0.9", "miniature", "miniature-sd4-fast"):
        assert PRESETS[name].base in catalogue.FAMILY_STYLES  # every shipped family is in the table
    sd = tmp_path / "sd15"
    for part, config in (("text_encoder", {"vocab_size": 49408}),
                         ("unet", {"cross_attention_dim": 768, "block_out_channels": [320, 640, 1280],
                                   "layers_per_block": 1})):
        (sd / part).mkdir(parents=True)
        (sd / part / "config.json").write_text(json.dumps(config))
    assert family_of(sd) == "sd1.5"
    (sd / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768, "block_out_channels": [32],
                                                         "layers_per_block": 1}))
    assert family_of(sd) == ""  # a CLIP model of no released family: every style


def test_the_miniature_world_is_offered_no_style_and_a_style_in_name_only_is_refused(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PRESETS", {})
    assert family_of(tiny_dir) == "miniature"  # its own small vocabulary, not CLIP's
    hub = ModelHub(search_dirs=[], device="cpu", outputs=tmp_path / "outputs")
    hub.load_model(hub.register(str(tiny_dir)))
    assert hub.styles() == ("none",)
    with pytest.raises(ValueError, match="style 'photo' means nothing to the loaded model; choose one of \\['none'\\]"):
        text_to_image(hub, TextRequest("a red heart", style="photo"))
    assert len(text_to_image(hub, TextRequest("a red heart")).images) == 1
