"""Find and load models: presets, local diffusers folders and hub ids, with offline-aware errors.

Every path into the product (CLI, app, evaluator, trainers' validation) loads through here, so
tests that load a folder written by ``sdxs_core.testkit`` exercise what users run.
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .devices import resolve_device, resolve_dtype
from .errors import ONE_STEP_MAX_STEPS, NotAPipelineError
from .fits import check_vae_fits
from .presets import DEFAULT_MODEL, PRESETS, Preset
from .sources import resolve_model_dir


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
    check_family(path, info)
    return info


_COMPONENT_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                    "scheduler": "scheduler_config.json"}


def check_family(path: Path, info: dict) -> None:
    """Refuse, from configs alone, a folder that StableDiffusionPipeline would load and then fail
    on at the first generation: an SDXL-style pipeline (two text encoders, a U-Net wanting extra
    conditioning), an inpainting U-Net, a text encoder narrower or wider than the U-Net reads."""
    absent = [f"{c}/{f}" for c, f in _COMPONENT_FILES.items() if not (path / c / f).is_file()]
    if not (path / "tokenizer").is_dir():
        absent.append("tokenizer/")
    if absent:
        raise NotAPipelineError(f"'{path}' lists its components in model_index.json but {', '.join(absent)} "
                                f"{'is' if len(absent) == 1 else 'are'} missing ({_describe_folder(path)})")
    cls = info.get("_class_name", "")
    unet = _read_config(path / "unet" / "config.json")
    text = _read_config(path / "text_encoder" / "config.json")
    vae = _read_config(path / "vae" / "config.json")
    reasons = []
    if "XL" in cls or "text_encoder_2" in info or "tokenizer_2" in info:
        reasons.append(f"it is an SDXL-style {cls or 'pipeline'} (two text encoders)")
    if unet.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        reasons.append(f"its U-Net is a {unet['_class_name']}, not a UNet2DConditionModel")
    if unet.get("addition_embed_type"):
        reasons.append(f"its U-Net needs extra conditioning (addition_embed_type={unet['addition_embed_type']!r}, "
                       f"SDXL's size and text-pooling inputs)")
    width, cross = text.get("hidden_size"), unet.get("cross_attention_dim")
    if width and isinstance(cross, int) and width != cross:
        reasons.append(f"its text encoder gives {width}-wide embeddings but the U-Net reads {cross}")
    latents, unet_in = vae.get("latent_channels", 4), unet.get("in_channels", 4)
    if unet_in != latents:
        reasons.append(f"its U-Net takes {unet_in} input channels but the VAE makes {latents} "
                       f"({'an inpainting model' if unet_in == 9 else 'another family'})")
    if reasons:
        raise NotAPipelineError(f"'{path}' is not a model SDXS can run: {'; '.join(reasons)}. SDXS runs "
                                f"Stable-Diffusion-1.x/2.x-style one-step pipelines")


def _read_config(file: Path) -> dict:
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise NotAPipelineError(f"'{file}' is unreadable or not JSON ({e})") from None
    if not isinstance(config, dict):
        raise NotAPipelineError(f"'{file}' must hold a JSON object")
    return config


def is_one_step(path: Path, preset: Preset | None = None) -> bool:
    """A distilled model: a pipeline preset (the SDXS releases) or a folder our trainers wrote from a
    teacher (``train_info.json`` names it). Teachers and unknown folders keep every step count."""
    if preset is not None and preset.kind == "pipeline":
        return True
    try:
        return "teacher" in json.loads((path / "train_info.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


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


VAE_CLASSES = ("AutoencoderTiny", "AutoencoderKL")


def load_vae(source: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    """A decoder from a pipeline folder (its ``vae``), a decoder's own folder or a hub id (e.g. a
    TAESD-like tiny decoder); an ``AutoencoderKL`` stays fp32 under fp16, as in a pipeline."""
    import diffusers

    source = str(source)
    preset = PRESETS.get(source)
    path, _ = resolve_model_dir(source, kind=preset.kind if preset else "vae")
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config = folder / "config.json"
    if not config.is_file():
        raise NotAPipelineError(f"'{path}' holds no decoder: config.json is missing ({_describe_folder(folder)})")
    cls = json.loads(config.read_text()).get("_class_name")
    if cls not in VAE_CLASSES:
        raise NotAPipelineError(f"'{folder}' holds a {cls}, not a decoder ({' or '.join(VAE_CLASSES)})")
    keep_fp32 = cls == "AutoencoderKL" and dtype == torch.float16
    try:
        with _quiet_diffusers():
            vae = getattr(diffusers, cls).from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                                          dtype=torch.float32 if keep_fp32 else dtype)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise _wrap_load_error(folder, e) from e
    return vae.to(device)


def load_engine(model: str | os.PathLike = DEFAULT_MODEL, controlnet: str | os.PathLike | None = None,
                lora: str | os.PathLike | None = None, lora_scale: float = 1.0,
                device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                graphs: bool | None = None, vae: str | os.PathLike | None = None, backend: str = "torch",
                precision: str | None = "auto", cache_dir: str | os.PathLike | None = None,
                calibration_prompts: list[str] | None = None):
    """The one entry point: a ready ``OneStepEngine`` for a model (+ optional ControlNet and LoRA).
    ``graphs``: trace the one-step path (``sdxs_core.graphs``); default on a CPU, where Python
    overhead is a large share of a small model's time. ``vae``: decode with another model's decoder
    (a pipeline folder, a decoder folder or hub id; see ``load_vae``) instead of the model's own.

    ``backend``: "torch", "openvino" (``sdxs_core.openvino_backend``: ``precision`` fp32 / bf16 / int8 /
    mixed, converted networks cached in ``cache_dir``; int8 calibrates on ``calibration_prompts``) or
    "auto": OpenVINO where it is installed and applies (CPU, fp32 weights), torch otherwise. The library
    default stays torch: trainers validate networks they are still changing, which a converted copy
    would not follow; the CLI and the app default to auto. OpenVINO converts (or reads from its cache)
    at load, so the first image does not wait: ``engine.backend.events`` says what that cost."""
    from .engine import OneStepEngine, make_backend

    device = resolve_device(device)
    dtype = resolve_dtype(device, dtype)
    backend = resolve_backend(backend, device, dtype)
    path, preset = resolve_model_dir(model, kind="pipeline")
    components = load_pipeline_components(path, device, dtype)
    if vae is not None:
        components["vae"] = load_vae(vae, device, dtype)
        check_vae_fits(components["vae"], components["unet"])
    graphs = device.type == "cpu" if graphs is None else graphs
    engine = OneStepEngine(**components, name=preset.name if preset else str(model), graphs=graphs,
                           backend=make_backend(backend, device, dtype, precision, cache_dir, calibration_prompts))
    if is_one_step(path, preset):
        engine.max_steps = ONE_STEP_MAX_STEPS
    if controlnet is not None:
        engine.set_controlnet(load_controlnet(controlnet, device, dtype))
    if lora is not None:
        engine.load_lora(lora, scale=lora_scale)
    if engine.backend is not None:
        engine.backend.prepare(engine)
    return engine


BACKENDS = ("auto", "torch", "openvino")


def resolve_backend(backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """"auto" -> "openvino" when it is installed and applies (CPU, fp32 torch weights), else "torch";
    measured faster on CPUs with and without bf16 (docs/backends.md). An explicit dtype such as bf16
    keeps torch: OpenVINO takes its precision from ``precision``, not from torch's dtype."""
    if backend in (None, "auto"):
        from .openvino_backend import available

        return "openvino" if available() and device.type == "cpu" and dtype == torch.float32 else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "openvino":
        from .openvino_backend import available

        if not available():
            raise ValueError("backend='openvino' needs the openvino package (pip install -r requirements.txt); "
                             "use backend='torch' or 'auto'")
    return backend
