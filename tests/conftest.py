"""Shared fixtures: tiny models written to disk once per session and loaded back through the same
code users run. Tests must be offline: HF_HUB_OFFLINE is set before anything imports transformers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
    from trainers.core.testing import write_tiny_teacher

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
