"""Control extractors: any input, one resize path, the maps each ControlNet expects, and clear errors."""

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sdxs_core import control
from sdxs_core.control import (EXTRACTORS, DepthExtractor, ExtractorUnavailableError, SketchExtractor, availability,
                               depth_to_map, extract, resize_map)
from sdxs_core.depth import DEFAULT_MINIATURE_DIR, MiniatureDepth, MiniatureDepthNet, TransformersDepth, is_miniature_dir
from trainers.miniature import world
from trainers.miniature.evaluate import control_maps, depth_correlation

needs_depth_asset = pytest.mark.skipif(not is_miniature_dir(DEFAULT_MINIATURE_DIR), reason="no trained depth estimator in assets")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CPU is shared with training jobs: one thread is both fairer and faster here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def random_depth_dir(tmp_path_factory):
    """An untrained miniature estimator on disk: lets the depth extractor run when assets hold none."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("depth") / "miniature"
    MiniatureDepthNet(channels=(4, 8, 8)).save_pretrained(folder)
    return folder


@pytest.fixture()
def registry(monkeypatch, random_depth_dir):
    """EXTRACTORS with a depth model guaranteed (the shipped one, else the random one); restored afterwards."""
    monkeypatch.delenv("SDXS_DEPTH_MODEL", raising=False)
    monkeypatch.delenv("SDXS_ANNOTATORS", raising=False)
    if not EXTRACTORS["depth"].available():
        monkeypatch.setitem(EXTRACTORS, "depth", DepthExtractor(model=random_depth_dir))
    return EXTRACTORS


def _frame(h: int = 512, w: int = 512) -> np.ndarray:
    """A world scene scaled up to h x w with grain: shapes, edges and some texture at any size."""
    image = cv2.resize(world.render_batch(3, 1, style="mixed")["images"][0], (w, h), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


INPUTS = {
    "grey 37x91": lambda: _frame(37, 91)[..., 1],
    "RGBA 37x91": lambda: np.asarray(Image.fromarray(_frame(37, 91)).convert("RGBA")),
    "16-bit 37x91": lambda: _frame(37, 91)[..., 0].astype(np.uint16) * 257,
    "RGB 512x512": lambda: _frame(512, 512),
}
KINDS = ("canny", "sketch", "depth", "none")


@pytest.mark.parametrize("size", [None, 64])
@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_extractor_handles_any_input(registry, kind, name, size):
    image = INPUTS[name]()
    out = extract(kind, image, size=size)
    want = image.shape[:2] if size is None else (size, size)
    assert out.image.shape == (*want, 3) and out.image.dtype == np.uint8
    assert out.kind == kind and out.ms > 0


def test_registry_holds_the_four_kinds_with_the_extractor_interface():
    assert set(KINDS) <= set(EXTRACTORS)
    for name, extractor in EXTRACTORS.items():
        assert extractor.name == name and callable(extractor)
        assert isinstance(extractor.available().ok, bool) and isinstance(extractor.describe(), str)


@pytest.mark.parametrize("kind", KINDS)
def test_size_equals_resizing_the_full_size_map(registry, kind):
    image = _frame(160, 224)
    full = extract(kind, image).image
    for size in (64, (48, 80), (200, 300)):  # shrink, non-square, grow
        assert np.array_equal(extract(kind, image, size=size).image, resize_map(full, size, EXTRACTORS[kind].lines))


def test_line_maps_shrink_by_max_pooling_so_thin_lines_survive():
    lines = np.zeros((512, 512, 3), np.uint8)
    lines[100, :] = 255  # a 1-pixel line
    small = resize_map(lines, 64, lines=True)
    assert np.array_equal(small, lines.reshape(64, 8, 64, 8, 3).max(axis=(1, 3)))
    assert (small[12] == 255).all() and small.sum() == 64 * 3 * 255
    assert np.array_equal(resize_map(small, 512, lines=True), small.repeat(8, 0).repeat(8, 1))  # nearest when growing
    soft = resize_map(lines, 64, lines=False)
    assert soft.max() < 64  # INTER_AREA would have faded it: why lines take the max


def test_canny_of_a_white_square_lies_on_its_border():
    image = np.zeros((64, 64), np.uint8)
    image[20:44, 20:44] = 255
    edges = extract("canny", image).image[..., 0] > 0
    square = np.zeros((64, 64), np.uint8)
    square[20:44, 20:44] = 1
    border = (cv2.dilate(square, np.ones((3, 3), np.uint8)) - cv2.erode(square, np.ones((3, 3), np.uint8))) > 0
    assert edges.any() and not (edges & ~border).any()
    for side in (edges[18:22, 24:40], edges[42:46, 24:40], edges[24:40, 18:22], edges[24:40, 42:46]):
        assert side.any(axis=0).all() or side.any(axis=1).all()  # every side traced along its length


def test_canny_sees_colour_edges_of_equal_luminance():
    image = np.full((64, 64, 3), (110, 70, 40), np.uint8)  # brown
    image[20:44, 20:44] = (220, 35, 35)  # red: nearly the same grey level
    assert abs(int(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[0, 0]) - int(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[30, 30])) < 15
    assert extract("canny", image).image.any()


def test_sketch_turns_black_strokes_on_white_into_white_strokes_on_black(monkeypatch):
    monkeypatch.delenv("SDXS_ANNOTATORS", raising=False)
    paper = np.full((128, 128, 3), 255, np.uint8)
    cv2.line(paper, (10, 20), (110, 100), (0, 0, 0), 3)
    cv2.circle(paper, (64, 40), 20, (0, 0, 0), 2)
    stroke = paper[..., 0] < 128
    out = extract("sketch", paper).image
    assert EXTRACTORS["sketch"].describe().startswith("sketch (OpenCV")
    near = cv2.dilate(stroke.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert (out[stroke] == 255).mean() > 0.9  # strokes are white
    assert (out[~near] == 0).all()  # paper is black


@needs_depth_asset
def test_miniature_depth_extractor_correlates_with_true_depth(monkeypatch):
    monkeypatch.delenv("SDXS_DEPTH_MODEL", raising=False)
    assert EXTRACTORS["depth"].available() and "miniature" in EXTRACTORS["depth"].describe()
    data = world.render_batch(10**9 + 7, 48, style="mixed", split="eval")
    maps = np.stack([extract("depth", image).image[..., 0] for image in data["images"]])
    assert depth_correlation(maps / 255.0, data["depth"]) >= 0.85
    # the batch estimator the evaluator takes gives the same maps as the per-frame path
    batch = MiniatureDepth.load().estimate_batch(data["images"])
    assert np.array_equal(np.stack([depth_to_map(d, "absolute")[..., 0] for d in batch]), maps)


def test_absolute_depth_maps_use_the_evaluators_formula():
    real = world.render_batch(5, 8, style="mixed", split="eval")
    for truth, expected in zip(real["depth"], control_maps(real, "depth")):
        assert np.array_equal(depth_to_map(truth, "absolute"), expected)
    frame = depth_to_map(real["depth"][0], "frame")  # the transformers path: stretched to 0..255 per frame
    assert frame.min() == 0 and frame.max() == 255


def test_miniature_estimator_round_trips_config_first(tmp_path, random_depth_dir):
    model = MiniatureDepthNet.from_pretrained(random_depth_dir)
    assert model.config == {"channels": [4, 8, 8], "resolution": 64}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    model.save_pretrained(tmp_path)
    again = MiniatureDepthNet.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(x), again(x)) and model(x).shape == (2, 64, 64)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temp files left behind


def _tiny_transformers_depth(folder, kind: str):
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTConfig,
                              DPTForDepthEstimation, DPTImageProcessor)

    torch.manual_seed(0)
    if kind == "depth_anything":
        backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                patch_size=14, image_size=28, out_features=["stage1", "stage2"], reshape_hidden_states=False)
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=16, patch_size=14, neck_hidden_sizes=[8, 16],
            fusion_hidden_size=8, head_hidden_size=4, reassemble_factors=[2, 1]))
        side, multiple = 28, 14
    else:
        model = DPTForDepthEstimation(DPTConfig(
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8,
            backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8,
            reassemble_factors=[4, 2, 1, 0.5]))
        side, multiple = 32, 8
    with torch.no_grad():  # transformers' init (std 0.02, zero biases) gives a constant map through the final ReLU
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=False, ensure_multiple_of=multiple).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["depth_anything", "dpt"])
def test_transformers_depth_from_a_local_folder(tmp_path, monkeypatch, kind):
    folder = _tiny_transformers_depth(tmp_path / kind, kind)
    monkeypatch.setenv("SDXS_DEPTH_MODEL", str(folder))
    monkeypatch.setitem(EXTRACTORS, "depth", DepthExtractor())  # picks the folder up from the environment
    extractor = EXTRACTORS["depth"]
    assert extractor.available() and extractor.source() == ("transformers", str(folder))
    assert extractor.normalisation() == "frame"
    for image in (INPUTS["grey 37x91"](), INPUTS["RGB 512x512"]()):
        out = extract("depth", image, device="cpu")
        assert out.image.shape == (*image.shape[:2], 3) and out.image.dtype == np.uint8 and out.ms > 0
        grey = out.image[..., 0]
        assert (out.image == grey[..., None]).all()
        assert grey.min() == 0 and grey.max() == 255  # stretched per frame
    raw = TransformersDepth.load(folder)(image)  # relative inverse depth: larger = nearer
    assert np.array_equal(out.image, depth_to_map(raw, "frame"))
    assert out.image[..., 0].flat[raw.argmax()] == 255 and out.image[..., 0].flat[raw.argmin()] == 0


def test_unavailable_extractors_say_why_and_extract_raises_a_clear_value_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SDXS_DEPTH_MODEL", raising=False)
    monkeypatch.setitem(EXTRACTORS, "depth", DepthExtractor(default_dir=tmp_path / "nothing-here"))
    status = availability()["depth"]
    assert not status and "SDXS_DEPTH_MODEL" in status.reason and "trainers.miniature.depth" in status.reason
    assert availability()["canny"] and availability()["sketch"] and availability()["none"]
    with pytest.raises(ValueError, match="depth control is unavailable.*SDXS_DEPTH_MODEL") as caught:
        extract("depth", np.zeros((8, 8, 3), np.uint8))
    assert isinstance(caught.value, ExtractorUnavailableError)  # an SDXSError too: the app shows it as-is
    monkeypatch.setenv("SDXS_DEPTH_MODEL", str(tmp_path))  # a folder that holds no model
    assert "is not a depth model folder" in DepthExtractor().available().reason
    with pytest.raises(ValueError, match="unknown control type"):
        extract("normal", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="size"):
        extract("canny", np.zeros((8, 8, 3), np.uint8), size=0)


def test_sketch_uses_controlnet_aux_weights_from_a_local_folder(tmp_path, monkeypatch):
    pidinet = pytest.importorskip("controlnet_aux.pidi.model").pidinet  # importing controlnet-aux takes ~6 s here
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in pidinet().state_dict().items()}}, tmp_path / "table5_pidinet.pth")
    monkeypatch.setenv("SDXS_ANNOTATORS", str(tmp_path))
    assert SketchExtractor().backend() == "pidinet"
    assert SketchExtractor(detector="opencv").backend() == "opencv"
    assert SketchExtractor(detector="hed").backend() == "opencv"  # chosen, but its weights are not there
    monkeypatch.setitem(EXTRACTORS, "sketch", SketchExtractor(detect_resolution=64))
    out = extract("sketch", INPUTS["grey 37x91"]())
    assert out.image.shape == (37, 91, 3) and out.image.dtype == np.uint8 and out.ms > 0


def test_depth_trainer_runs_and_saves(tmp_path):
    from trainers.miniature.depth import train_depth

    metrics = train_depth(tmp_path, steps=2, batch=4, config={"channels": [4, 8], "resolution": 64}, eval_images=8, log_every=0)
    assert len(metrics["loss"]) == 2 and np.isfinite(metrics["loss"]).all()
    assert -1 <= metrics["eval"]["pearson"] <= 1 and is_miniature_dir(tmp_path)
    assert control.DepthExtractor(model=tmp_path).source() == ("miniature", str(tmp_path))
