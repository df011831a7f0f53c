"""Shared fixtures: tiny models written to disk once per session and loaded back through the same
code users run. Tests must be offline: HF_HUB_OFFLINE is set before anything imports transformers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# converted OpenVINO models (the CLI's and app's auto backend) go to a throw-away folder, not the user's cache
os.environ.setdefault("SDXS_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="sdxs-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from sdxs_core.testkit import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def mid_teacher_dir(tmp_path_factory):
    """A tiny SD-like teacher (mid block, three stages) that block removal can shrink."""
    from trainers.miniature.testing import write_tiny_teacher

    return write_tiny_teacher(tmp_path_factory.mktemp("models") / "tiny-mid")


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_dir, tmp_path_factory):
    from sdxs_core.testkit import write_tiny_controlnet

    return write_tiny_controlnet(tiny_dir, tmp_path_factory.mktemp("models") / "tiny-controlnet")


@pytest.fixture(scope="session")
def tiny_lora_file(tiny_dir, tmp_path_factory):
    from sdxs_core.testkit import write_tiny_lora

    return write_tiny_lora(tiny_dir, tmp_path_factory.mktemp("models") / "tiny-lora")


@pytest.fixture(scope="session")
def other_base_dir(tmp_path_factory):
    """A tiny pipeline whose text encoder is wider (48 vs 32): stands in for 'another base model'."""
    from sdxs_core.testkit import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("models") / "other", cross_attention_dim=48)


@pytest.fixture()
def engine(tiny_dir):
    from sdxs_core import load_engine

    return load_engine(tiny_dir, device="cpu")


TINY_STAGE = dict(batch_size=2, num_pairs=4, teacher_steps=2, num_prompts=8, max_steps=6, checkpoint_every=2,
                  validate_every=2, log_every=1, val_prompts=["a b"], lr=1e-3)


@pytest.fixture(scope="session")
def presets(tmp_path_factory, tiny_dir, tiny_controlnet_dir):
    """Job presets for the tiny test models: ``tiny`` (every stage a job can run, a few steps) and
    ``slow`` (one LoRA-SSD stage long enough to cancel or kill mid-way)."""
    import yaml

    folder = tmp_path_factory.mktemp("presets")
    small = {k: v for k, v in TINY_STAGE.items() if k not in ("num_pairs", "teacher_steps")}
    preset = {
        "description": "tiny test models",
        "models": {"teacher": str(tiny_dir), "student": str(tiny_dir),
                   "teacher_controlnet": {"canny": str(tiny_controlnet_dir)}},
        "stages": {
            "lora_teacher": {"set": {**small, "validate_every": 0}},
            "lora_ssd": {"set": dict(TINY_STAGE, fresh_ratio=1.0)},
            "controlnet_teacher": {"set": small},
            "controlnet_ssd": {"set": dict(TINY_STAGE, val_prompts=["a"])},
        },
    }
    (folder / "tiny.yaml").write_text(yaml.safe_dump(preset))
    slow = {**preset, "stages": {"lora_ssd": {"set": dict(TINY_STAGE, fresh_ratio=1.0, max_steps=40, checkpoint_every=5,
                                                              validate_every=10)}}}
    (folder / "slow.yaml").write_text(yaml.safe_dump(slow))
    return folder


@pytest.fixture(scope="session")
def style_lora(tiny_dir, tmp_path_factory):
    """A LoRA of the tiny teacher, as a user's existing style LoRA for a job to distil."""
    from sdxs_core.testkit import write_tiny_lora

    return write_tiny_lora(tiny_dir, tmp_path_factory.mktemp("style") / "lora")


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    """A ``ModelHub`` with the random tiny model and its ControlNet loaded, offering only those."""
    from sdxs_core.catalogue import ensure_tiny_model
    from sdxs_core.hub import ModelHub

    outputs = tmp_path_factory.mktemp("app") / "outputs"
    ensure_tiny_model(outputs)
    hub = ModelHub(search_dirs=[outputs], device="cpu", outputs=outputs)
    hub.start("outputs/tiny-model")
    return hub


@pytest.fixture(scope="module")
def tiny_app(tiny_hub):
    """``(hub, url)``: the real app serving the random tiny model on a free localhost port."""
    import socket

    from app import build_demo

    hub = tiny_hub
    demo = build_demo(hub)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    yield hub, f"http://127.0.0.1:{port}/"
    demo.close()
