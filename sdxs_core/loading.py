"""Find and load models: presets, local diffusers folders and hub ids, with offline-aware errors.

Every path into the product (CLI, app, evaluator, trainers' validation) loads through here, so
tests that load a folder written by ``sdxs_core.testkit`` exercise what users run.
"""

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from .devices import resolve_device, resolve_dtype
from .errors import IncompatibleWeightsError, ModelNotFoundError, ModelUnavailableError, NotAPipelineError
from .presets import DEFAULT_MODEL, PRESETS, Preset, _is_hub_id

HUB_HOST = "huggingface.co"
_WEIGHT_PATTERNS = ["*.json", "*.txt", "*.safetensors", "tokenizer*/*", "*.model"]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 1.5) -> bool:
    """One quick TCP connect, so an offline machine fails in ~1 s instead of retrying for ~20 s."""
    if hub_offline():
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable_message(name: str, repo_id: str, kind: str) -> str:
    shown = f"'{name}' ({repo_id})" if name != repo_id else f"'{repo_id}'"
    return (
        f"The {kind} {shown} is not in the local Hugging Face cache and the Hub cannot be reached "
        f"({'HF_HUB_OFFLINE is set' if hub_offline() else 'no network'}). "
        f"On a machine with network, fetch it with `hf download {repo_id}` (older huggingface_hub: "
        f"`huggingface-cli download {repo_id}`) and copy the cache (~/.cache/huggingface) here, or "
        f"download it into a folder (`hf download {repo_id} --local-dir DIR`) and pass that folder instead. "
        f"The bundled miniature model runs offline: `--model {DEFAULT_MODEL}`."
    )


def resolve_model_dir(model: str | os.PathLike, kind: str = "pipeline") -> tuple[Path, Preset | None]:
    """Map a preset name, local folder or hub id to a local folder (downloading only when online)."""
    model = str(model)
    preset = PRESETS.get(model)
    if preset is not None and preset.kind != kind:
        raise NotAPipelineError(f"'{model}' is a {preset.kind} preset, not a {kind}")
    source = preset.source if preset else model
    if preset is not None and preset.bundled:
        path = Path(source)
        if not path.is_dir():
            raise ModelNotFoundError(f"bundled model '{model}' is missing at {path}; "
                                     f"reinstall the repository or run its recipe to rebuild it")
        return path, preset
    path = Path(source).expanduser()
    if path.exists():
        return path, preset
    if not _is_hub_id(source):
        names = ", ".join(n for n, p in PRESETS.items() if p.kind == kind)
        raise ModelNotFoundError(f"no {kind} at '{model}': not an existing path, a hub id (org/name) "
                                 f"or a preset ({names})")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(source, local_files_only=True)), preset
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
        raise ModelUnavailableError(_unavailable_message(model, source, kind))
    return Path(snapshot_download(source, allow_patterns=_WEIGHT_PATTERNS)), preset


def _describe_folder(path: Path) -> str:
    entries = sorted(p.name for p in path.iterdir())[:8] if path.is_dir() else []
    return f"it contains: {', '.join(entries) or 'nothing'}"


def validate_pipeline_dir(path: Path) -> dict:
    if not path.is_dir():
        raise NotAPipelineError(f"'{path}' is a file, not a diffusers pipeline folder")
    index = path / "model_index.json"
    if not index.is_file():
        hint = ""
        if (path / "config.json").is_file():
            cls = json.loads((path / "config.json").read_text()).get("_class_name", "a single model")
            hint = f" It holds {cls} (one component, not a pipeline)."
        raise NotAPipelineError(f"'{path}' is not a diffusers pipeline folder: model_index.json is missing "
                                f"({_describe_folder(path)}).{hint}")
    try:
        info = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise NotAPipelineError(f"'{index}' is corrupt (not valid JSON: {e})") from None
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in info]
    if missing:
        raise NotAPipelineError(f"'{path}' is a {info.get('_class_name', 'pipeline')} without "
                                f"{', '.join(missing)}; SDXS needs a Stable-Diffusion-style text-to-image pipeline")
    return info


def validate_controlnet_dir(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise NotAPipelineError(f"'{path}' is not a ControlNet folder: config.json is missing ({_describe_folder(path)})")
    cls = json.loads(config.read_text()).get("_class_name")
    if cls != "ControlNetModel":
        raise NotAPipelineError(f"'{path}' holds a {cls}, not a ControlNetModel")


def _wrap_load_error(path: Path, err: Exception) -> NotAPipelineError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "safetensors" in text.lower() and ("could not find" in text.lower() or "no file named" in text.lower()):
        text += " (pickled .bin weights are not loaded, for security: convert them to safetensors)"
    return NotAPipelineError(f"could not load '{path}': {text}")


@contextmanager
def _quiet_diffusers():
    """diffusers warns that an SDXS folder's AutoencoderTiny is not the AutoencoderKL that
    StableDiffusionPipeline expects, logs load failures we re-raise with a clearer message, and
    shows progress bars: none of it helps a user here."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    levels = dlogging.get_verbosity(), tlogging.get_verbosity()
    for lib in (dlogging, tlogging):
        lib.set_verbosity(lib.CRITICAL)  # our own exception carries the message
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level in zip((dlogging, tlogging), levels):
            lib.set_verbosity(level)
            lib.enable_progress_bar()


def load_pipeline_components(path: Path, device: torch.device, dtype: torch.dtype) -> dict:
    """Components of a Stable-Diffusion-style folder, on ``device``; the VAE stays fp32 if it is an
    ``AutoencoderKL`` and ``dtype`` is fp16 (SD VAEs overflow to NaN in fp16; TAESD does not)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    validate_pipeline_dir(path)
    try:
        with _quiet_diffusers():
            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                use_safetensors=True, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise _wrap_load_error(path, e) from e
    pipe.to(device)  # dtype was applied at load time
    if isinstance(pipe.vae, AutoencoderKL) and dtype == torch.float16:
        pipe.vae.to(dtype=torch.float32)
    return dict(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, unet=pipe.unet,
                vae=pipe.vae, scheduler=pipe.scheduler)


def load_controlnet(source: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    from diffusers import ControlNetModel

    path, _ = resolve_model_dir(source, kind="controlnet")
    validate_controlnet_dir(path)
    try:
        with _quiet_diffusers():
            controlnet = ControlNetModel.from_pretrained(path, use_safetensors=True, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise _wrap_load_error(path, e) from e
    return controlnet.to(device)


def check_controlnet_fits(controlnet, unet) -> None:
    """A ControlNet adds residuals to the U-Net's skip connections: widths must agree exactly."""
    c, u = controlnet.config, unet.config
    if c.cross_attention_dim != u.cross_attention_dim:
        raise IncompatibleWeightsError(
            f"this ControlNet was made for a base with cross-attention width {c.cross_attention_dim}; "
            f"the loaded U-Net has {u.cross_attention_dim} (e.g. an SD2.1 ControlNet on an SD1.5 model)")
    if tuple(c.block_out_channels) != tuple(u.block_out_channels) or c.layers_per_block != u.layers_per_block:
        raise IncompatibleWeightsError(
            f"this ControlNet's blocks {tuple(c.block_out_channels)} x{c.layers_per_block} do not match the "
            f"U-Net's {tuple(u.block_out_channels)} x{u.layers_per_block}: it was made for another U-Net")


def load_engine(model: str | os.PathLike = DEFAULT_MODEL, controlnet: str | os.PathLike | None = None,
                lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
                device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                graphs: bool | None = None):
    """The one entry point: a ready ``OneStepEngine`` for a model (+ optional ControlNet and LoRA).
    ``graphs``: trace the one-step path (``sdxs_core.graphs``); default on a CPU, where Python
    overhead is a large share of a small model's time."""
    from .engine import OneStepEngine

    device = resolve_device(device)
    dtype = resolve_dtype(device, dtype)
    path, preset = resolve_model_dir(model, kind="pipeline")
    components = load_pipeline_components(path, device, dtype)
    graphs = device.type == "cpu" if graphs is None else graphs
    engine = OneStepEngine(**components, name=preset.name if preset else str(model), graphs=graphs)
    if controlnet is not None:
        engine.set_controlnet(load_controlnet(controlnet, device, dtype))
    if lora is not None:
        engine.load_lora(lora, scale=lora_scale)
    return engine
