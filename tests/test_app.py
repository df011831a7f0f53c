"""The studio's model holder and the Gradio app, served in-process on the tiny model and driven
with gradio_client as a remote client would."""

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sdxs_core.presets import DEFAULT_MODEL
from sdxs_core.catalogue import TINY_NOTE, ensure_tiny_model
from sdxs_core.control import sketch_to_control
from sdxs_core.hub import ModelHub, TextRequest, text_to_image


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, other_base_dir):
    """An ``outputs/`` folder as trainers leave it: the tiny model, LoRAs in three formats, and
    adapters made for another base, plus files that are not models."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    from sdxs_core.testkit import write_tiny_controlnet, write_tiny_lora

    root = tmp_path_factory.mktemp("studio") / "outputs"
    model, _ = ensure_tiny_model(root)
    write_tiny_lora(model, root / "runs" / "style-lora")
    peft = write_tiny_lora(model, root / "runs" / "peft-lora", fmt="peft")
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(peft / "adapter_model.safetensors").items()}
    kohya = {f"lora_unet_{k}": v for k, v in convert_state_dict_to_kohya(state).items()}
    save_file(kohya, root / "runs" / "kohya.safetensors")
    write_tiny_lora(other_base_dir, root / "other-base" / "lora")
    write_tiny_controlnet(other_base_dir, root / "other-base" / "controlnet")
    (root / "runs" / "notes.txt").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def hub(outputs):
    hub = ModelHub(search_dirs=[outputs], device="cpu", outputs=outputs)
    hub.start("outputs/tiny-model")
    return hub


LORA = "outputs/runs/style-lora/pytorch_lora_weights.safetensors"
OTHER_LORA = "outputs/other-base/lora/pytorch_lora_weights.safetensors"


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ---- the model holder -----------------------------------------------------------------------------
def test_discovery_offers_only_what_fits_the_loaded_base(hub):
    assert hub.model_key == "outputs/tiny-model" and hub.controlnet_key == "outputs/tiny-model-controlnet"
    assert "outputs/tiny-model" in [key for _, key in hub.choices("pipeline")]
    assert [key for _, key in hub.choices("controlnet")] == ["outputs/tiny-model-controlnet"]
    offered = sorted(key for _, key in hub.choices("lora"))
    assert offered == ["outputs/runs/kohya.safetensors", "outputs/runs/peft-lora", LORA]
    listed = {e.key: e.base for kind in ("controlnet", "lora") for e in hub.entries(kind)}
    assert listed["outputs/other-base/controlnet"].startswith("cross-attn 48")
    assert listed[OTHER_LORA] == "cross-attn 48"
    assert not any("notes" in key for key in listed)


def test_a_loaded_model_attaches_the_canny_controlnet_before_others(tmp_path):
    """The Live tab opens on canny: of the fitting ControlNets, a canny one is attached first,
    whatever the alphabet says; the control type shows in the list."""
    import json
    import shutil

    from sdxs_core.catalogue import control_type_of

    root = tmp_path / "outputs"
    model, controlnet = ensure_tiny_model(root)
    for name, info in [("a-depth", {"control_type": "depth"}), ("b-unlabelled", None), ("z-run", {"control_type": "canny"})]:
        shutil.copytree(controlnet, root / name)
        if info:
            (root / name / "train_info.json").write_text(json.dumps(info))
    shutil.copytree(controlnet, root / "control_v11p_sd15_scribble")
    assert control_type_of(root / "control_v11p_sd15_scribble") == "sketch"
    assert control_type_of(root / "b-unlabelled") == ""
    hub = ModelHub(search_dirs=[root], device="cpu", outputs=root)
    hub.start("outputs/tiny-model")
    assert hub.controlnet_key == "outputs/z-run" and hub.controlnet_control == "canny"
    labels = dict((key, label) for label, key in hub.choices("controlnet"))
    assert labels["outputs/a-depth"] == "outputs/a-depth (depth)" and labels["outputs/b-unlabelled"] == "outputs/b-unlabelled"
    shutil.rmtree(root / "z-run")  # without a canny one: sketch, then depth, then unknown types
    hub.rescan()
    hub.load_model("outputs/tiny-model")
    assert hub.controlnet_key == "outputs/control_v11p_sd15_scribble"


def test_live_readout_points_out_a_map_the_controlnet_was_not_trained_on():
    from app import live_readout
    from sdxs_core.stream import STAGES, FrameResult, LiveParams, LiveStats

    result = FrameResult(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8),
                         {s: 1.0 for s in STAGES}, latency_ms=20.0, reused=False)
    stats = LiveStats(fps=15.0, latency_ms=20.0, frames=3, generated=3, reused=0, superseded=0)
    assert "trained on" not in live_readout(result, stats, LiveParams(control_type="canny"), "canny")
    warned = live_readout(result, stats, LiveParams(control_type="depth"), "canny")
    assert "trained on canny maps" in warned and "attach a depth ControlNet" in warned
    assert "trained on" not in live_readout(result, stats, LiveParams(control_type="depth"), "")  # type unknown


@pytest.mark.parametrize("key", ["/etc", "../../etc", "outputs/../../../etc", "/etc/passwd", ["outputs/tiny-model"]])
def test_client_keys_outside_the_offer_are_refused_before_any_load(hub, monkeypatch, key):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"tried to load {args[0]!r}")

    monkeypatch.setattr("sdxs_core.hub.load_engine", forbidden)
    monkeypatch.setattr("sdxs_core.hub.load_controlnet", forbidden)
    before = (hub.model_key, hub.controlnet_key, hub.lora_key, hub.engine)
    for action in (hub.load_model, hub.set_controlnet, hub.set_lora):
        assert "is not one of the" in action(key)
    assert (hub.model_key, hub.controlnet_key, hub.lora_key, hub.engine) == before


def test_unavailable_hub_model_falls_back_with_a_notice(tmp_path):
    hub = ModelHub(search_dirs=[], device="cpu", outputs=tmp_path)  # HF_HUB_OFFLINE=1 in tests
    notice = hub.start("sdxs-512-dreamshaper")
    assert "not available offline" in notice and "hf download IDKiro/sdxs-512-dreamshaper" in notice
    assert "Falling back" in notice and hub.engine is not None
    assert "not available offline" in hub.status()  # on the page, not just in the log
    if hub.model_key != DEFAULT_MODEL:  # the random tiny model says so too
        assert TINY_NOTE in hub.status()


def test_text_to_image_is_unchanged_by_the_attached_controlnet(hub, outputs):
    from sdxs_core import load_engine

    plain = load_engine(outputs / "tiny-model", device="cpu").generate("a red heart", seed=5, num_images=2)
    with_cn = text_to_image(hub, TextRequest("a red heart", seed=5, num_images=2))
    assert hub.engine.controlnet is not None
    for a, b in zip(plain.images, with_cn.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_lora_switch_scale_and_removal(hub):
    def image():
        return np.asarray(text_to_image(hub, TextRequest("a red heart", seed=1)).images[0], dtype=np.int16)

    base = image()
    assert "LoRA" in hub.set_lora(LORA, 1.0) and hub.lora_key == LORA
    styled = image()
    assert np.abs(styled - base).max() > 0
    hub.set_lora_scale(0.0)
    assert np.array_equal(image(), base)
    hub.set_lora("none")
    assert hub.lora_key is None and np.array_equal(image(), base)
    notice = hub.set_lora(OTHER_LORA)  # offered by discovery but made for another base
    assert "cross-attention width" in notice and hub.lora_key is None


def test_switches_wait_for_running_generations_and_hold_new_ones_back(hub):
    release, order = threading.Event(), []

    def generation(name, hold):
        with hub.using():
            order.append(f"{name} start")
            if hold:
                assert release.wait(10)
            order.append(f"{name} end")

    running = threading.Thread(target=generation, args=("running", True))
    running.start()
    while not order:
        time.sleep(0.01)
    switch = threading.Thread(target=lambda: (hub.set_lora_scale(1.0), order.append("switch")))
    switch.start()
    time.sleep(0.2)
    late = threading.Thread(target=generation, args=("late", False))
    late.start()
    time.sleep(0.2)
    assert order == ["running start"]  # the switch waits; the late generation waits behind it
    release.set()
    for t in (running, switch, late):
        t.join(10)
    assert order == ["running start", "running end", "switch", "late start", "late end"]


def test_sketch_canvas_becomes_white_strokes_on_black():
    canvas = np.zeros((32, 32, 4), np.uint8)  # transparent paper
    canvas[10:12, 4:28] = (0, 0, 0, 255)  # a black stroke
    canvas[20:22, 4:28] = (200, 30, 30, 255)  # a red one counts too
    control = sketch_to_control({"background": None, "layers": [], "composite": canvas})
    assert control.shape == (32, 32, 3)
    assert control[11, 10].tolist() == [255, 255, 255] and control[21, 10].min() > 200
    assert control[0, 0].tolist() == [0, 0, 0]
    white_paper = np.full((32, 32, 3), 255, np.uint8)
    assert sketch_to_control(white_paper) is None and sketch_to_control(None) is None


# ---- the served app ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(hub):
    from app import build_demo

    demo = build_demo(hub)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def new_client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def client(server):
    return new_client(server)


def square_frame_file(tmp_path, x: int) -> str:
    frame = np.zeros((96, 128, 3), np.uint8)
    frame[30:70, x:x + 40] = 255
    path = tmp_path / f"frame-{x}.png"
    Image.fromarray(frame).save(path)
    return str(path)


def live_frame(client, path, seed: int = 0, control: str = "canny"):
    from gradio_client import handle_file

    image, control_map, readout, info = client.predict(handle_file(path), "a red heart", control, 1.0, seed,
                                                       api_name="/live_frame")
    return pixels(image), pixels(control_map), readout, info


def test_text_to_image_endpoint_shows_seeds_and_latency(client):
    gallery, info = client.predict("a blue star", "none", 7, False, 2, api_name="/generate")
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["seed 7", "seed 8"]
    assert all(item["caption"].endswith(" ms") for item in gallery)
    assert "2 images in" in info and "ms/image" in info and "U-Net" in info
    again, _ = client.predict("a blue star", "none", 7, False, 2, api_name="/generate")
    assert np.array_equal(pixels(gallery[0]["image"]), pixels(again[0]["image"]))
    other, _ = client.predict("a blue star", "none", 9, False, 1, api_name="/generate")
    assert not np.array_equal(pixels(other[0]["image"]), pixels(gallery[0]["image"]))


def test_live_frame_endpoint_follows_the_input(client, tmp_path):
    a, a_map, readout, info = live_frame(client, square_frame_file(tmp_path, 10))
    assert "fps" in readout and "latency" in readout and info["stages_ms"]["unet_ms"] > 0
    b, b_map, _, info_b = live_frame(client, square_frame_file(tmp_path, 80))
    assert not info_b["frame_reused"]
    assert not np.array_equal(a, b) and not np.array_equal(a_map, b_map)
    a_again, _, _, info_a = live_frame(client, square_frame_file(tmp_path, 10))
    assert not info_a["frame_reused"] and np.abs(a_again - a).max() <= 2  # fixed noise: same frame, same output
    _, _, readout, info = live_frame(client, square_frame_file(tmp_path, 10))
    assert info["frame_reused"] and "static" in readout
    _, sketch_map, _, _ = live_frame(client, square_frame_file(tmp_path, 10), control="sketch")
    assert not np.array_equal(sketch_map, a_map)  # the control type switches between frames


def test_two_clients_do_not_share_live_state(server, tmp_path):
    first, second = new_client(server), new_client(server)
    frame = square_frame_file(tmp_path, 40)
    one, _, _, _ = live_frame(first, frame, seed=0)
    _, _, _, info = live_frame(first, frame, seed=0)
    assert info["frame_reused"] and info["frames"] == 2
    two, _, _, info = live_frame(second, frame, seed=0)
    assert not info["frame_reused"] and info["frames"] == 1  # first's cached frame is not second's
    assert np.abs(two - one).max() <= 2  # same seed, same frame: same picture, computed afresh
    other, _, _, _ = live_frame(second, frame, seed=5)
    assert np.abs(other - one).max() > 2


def test_remote_client_cannot_make_the_server_read_paths(client, server, hub):
    import httpx
    from gradio_client.exceptions import AppError

    before = (hub.model_key, hub.controlnet_key, hub.lora_key)
    for api, args in (("/load_model", ("/etc",)), ("/set_controlnet", ("/etc",)), ("/set_lora", ("/etc/passwd", 1.0))):
        try:
            result = client.predict(*args, api_name=api)
        except AppError as e:  # Gradio's own check: not among the dropdown's choices
            assert "not in the list of choices" in str(e)
        else:
            assert "is not one of the" in result[0]
    assert (hub.model_key, hub.controlnet_key, hub.lora_key) == before
    assert httpx.get(f"{server}gradio_api/file=/etc/passwd").status_code != 200


def test_models_tab_reloads_an_offered_model(client, hub):
    banner, *_ = client.predict("outputs/tiny-model", api_name="/load_model")
    assert "Loaded **outputs/tiny-model**" in banner
    assert "ControlNet **outputs/tiny-model-controlnet** attached" in banner
    assert hub.controlnet_key == "outputs/tiny-model-controlnet"
