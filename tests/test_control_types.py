"""One control-type table (``sdxs_core.control``): every place that takes a control type accepts its
aliases (edges = canny) as that type and refuses an unknown one with a message naming the field."""

import json

import numpy as np
import pytest

from sdxs_core.control import CONTROL_ALIASES, CONTROL_NAMES, CONTROL_TYPES, control_kind, extract


def test_aliases_resolve_to_their_type_and_types_to_themselves():
    assert [control_kind(t) for t in CONTROL_TYPES] == list(CONTROL_TYPES)
    assert control_kind("edges") == control_kind("edge") == "canny"
    assert control_kind("lineart") == control_kind("scribble") == control_kind("hed") == "sketch"
    assert set(CONTROL_NAMES.values()) == set(CONTROL_TYPES) and set(CONTROL_ALIASES) < set(CONTROL_NAMES)


@pytest.mark.parametrize("bad", ["thermal", "", "Canny", None, 3, ["canny"]])
def test_unknown_types_are_refused_naming_the_field_and_the_choices(bad):
    with pytest.raises(ValueError) as caught:
        control_kind(bad, "control_type")
    text = str(caught.value)
    assert text.startswith(f"control_type={bad!r}: unknown control type") and "canny, sketch, depth" in text
    assert "edges = canny" in text


def test_a_narrower_choice_refuses_the_rest_and_lists_only_its_aliases():
    assert control_kind("edges", "kind", ("canny", "none")) == "canny"
    with pytest.raises(ValueError, match=r"kind='depth': unknown control type; choose one of canny, none \(also edges"):
        control_kind("depth", "kind", ("canny", "none"))
    with pytest.raises(ValueError) as caught:
        control_kind("hed", "kind", ("depth",))
    assert "also" not in str(caught.value)


def test_extract_takes_an_alias_as_its_type():
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255
    edges, canny = extract("edges", image), extract("canny", image)
    assert edges.kind == "canny" and np.array_equal(edges.image, canny.image)
    with pytest.raises(ValueError, match="control_type='x-ray': unknown control type"):
        extract("x-ray", image)


def test_the_live_loop_takes_aliases_and_none_and_refuses_the_rest():
    from sdxs_core.stream import LiveParams

    assert LiveParams(control_type="edges").control_type == "canny"
    assert LiveParams(control_type="none").control_type == "none"  # the passthrough: a live-loop choice only
    with pytest.raises(ValueError, match="control_type='x-ray'"):
        LiveParams(control_type="x-ray")


def test_the_catalogue_reads_aliases_in_train_info_and_folder_names(tmp_path):
    from sdxs_core.catalogue import control_type_of

    (tmp_path / "cn-edges").mkdir()
    assert control_type_of(tmp_path / "cn-edges") == "canny"
    (tmp_path / "cn-scribble").mkdir()
    assert control_type_of(tmp_path / "cn-scribble") == "sketch"
    written = tmp_path / "run-final"
    written.mkdir()
    (written / "train_info.json").write_text(json.dumps({"control_type": "edges"}))
    assert control_type_of(written) == "canny"
    (written / "train_info.json").write_text(json.dumps({"control_type": ["depth"]}))  # foreign: not a name
    assert control_type_of(written) == ""


def test_trainers_take_aliases_and_refuse_unknown_types_naming_the_field(tmp_path):
    from trainers.core.image_folder import folder_data
    from trainers.jobs.plan import JobError, JobRequest, plan_job

    assert JobRequest("controlnet", control_type="edges").control_type == "canny"
    with pytest.raises(JobError, match="control_type='thermal': unknown control type"):
        plan_job(JobRequest("controlnet", preset="quick", control_type="thermal"), tmp_path / "j", tmp_path / "c")
    with pytest.raises(ValueError, match="control_type='thermal': unknown control type"):
        folder_data(None, tmp_path, 64, "thermal")  # refused before any image is read
