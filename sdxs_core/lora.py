"""LoRA files in the three formats users bring (diffusers, PEFT folders, kohya), checked against
the U-Net before anything is changed, so a LoRA for another base fails cleanly and loses nothing."""

import functools
import json
import os
import re
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import CorruptWeightsError, IncompatibleWeightsError, ModelNotFoundError, NotAPipelineError, SDXSError

_DOWN = re.compile(r"^(?P<module>.+)\.(lora_A|lora\.down|lora_down)(\.[^.]+)?\.weight$")
_UP = re.compile(r"^(?P<module>.+)\.(lora_B|lora\.up|lora_up)(\.[^.]+)?\.weight$")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA's tensors from safetensors only (a pickle is never opened), all finite."""
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        raise NotAPipelineError(f"'{path}' is a pickled {path.suffix} file: LoRAs load from .safetensors only, for "
                                f"security. Convert it where you trust it (safetensors.torch.save_file) and pass that")
    if path.suffix != ".safetensors":
        raise NotAPipelineError(f"'{path}' is not a LoRA weight file (.safetensors expected)")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError on truncated files
        raise NotAPipelineError(f"LoRA file '{path}' is corrupt or not safetensors: {e}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CorruptWeightsError(f"LoRA file '{path}' has NaN/inf values in {len(bad)} of its {len(state)} tensors "
                                  f"(first: {bad[0]}): it would turn every image black, so it is refused")
    return state


def lora_is_finite(path: str | os.PathLike) -> bool:
    """Whether a LoRA file or PEFT folder reads as safetensors with finite values (cached per file
    version: the app asks for every listed LoRA on each page refresh)."""
    path = Path(path)
    file = path / "adapter_model.safetensors" if path.is_dir() else path
    try:
        stat = file.stat()
    except OSError:
        return False
    return _finite(str(file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _finite(file: str, mtime_ns: int, size: int) -> bool:
    try:
        _read_weights(Path(file))
    except SDXSError:
        return False
    return True


def read_lora(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """Return ``(unet_state_dict, network_alphas, peft_config)`` with keys relative to the U-Net.

    A PEFT folder (``adapter_config.json``) comes back with its config; diffusers and kohya files
    are converted by diffusers' own converters, to PEFT's ``lora_A`` / ``lora_B`` naming throughout.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no LoRA at '{source}'")
    if path.is_dir() and (path / "adapter_config.json").is_file():
        config = _read_adapter_config(path / "adapter_config.json")
        weights = next((path / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise NotAPipelineError(f"PEFT LoRA folder '{path}' has adapter_config.json but no adapter_model weights")
        state = {k.removeprefix("base_model.model."): v for k, v in _read_weights(weights).items()}
        return state, None, config
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise NotAPipelineError(f"'{path}' holds no LoRA (.safetensors or adapter_config.json)")
        path = files[0]
    from diffusers import StableDiffusionPipeline

    raw = _read_weights(path)
    try:
        state, alphas = StableDiffusionPipeline.lora_state_dict(raw)
    except (ValueError, KeyError) as e:
        raise NotAPipelineError(f"'{path}' is not a LoRA in diffusers, PEFT or kohya format: {e}") from None
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if len(unet_state) < len(state):
        warnings.warn(f"LoRA '{path.name}': text-encoder weights are ignored (only the U-Net part is applied)")
    if not unet_state:
        raise NotAPipelineError(f"'{path}' holds no U-Net LoRA weights")
    alphas = {k.removeprefix("unet."): v for k, v in (alphas or {}).items() if k.startswith("unet.")} or None
    # One naming for every key: diffusers' loader judges the naming by the first key, so a file that
    # mixes legacy "to_q.lora.down" with PEFT "conv1.lora_A" names would lose one half silently.
    from diffusers.utils import convert_unet_state_dict_to_peft

    return convert_unet_state_dict_to_peft(unet_state), alphas, None


def _read_adapter_config(file: Path) -> dict:
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NotAPipelineError(f"'{file}' is not valid JSON ({e}): the PEFT LoRA's config is broken; "
                                f"re-export the LoRA or fix the file") from None
    if not isinstance(config, dict):
        raise NotAPipelineError(f"'{file}' must hold a JSON object (a PEFT LoraConfig)")
    return config


def check_lora_fits(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every LoRA pair must target an existing layer with matching in/out widths."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    state = convert_unet_state_dict_to_peft(dict(state))  # old "to_k_lora.down" names -> "to_k.lora_A"
    modules = dict(unet.named_modules())
    bad_width, missing = [], []
    for key, tensor in state.items():
        down, up = _DOWN.match(key), _UP.match(key)
        if not (down or up):
            if key.endswith(".weight") and "lora" in key:
                missing.append(key)  # a LoRA weight we cannot place: refuse rather than load it blind
            continue
        name = (down or up)["module"]
        layer = modules.get(name)
        if layer is None:
            missing.append(name)
            continue
        have_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        have_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        if (down and tensor.shape[1] != have_in) or (up and tensor.shape[0] != have_out):
            bad_width.append((name, tuple(tensor.shape), have_in, have_out))
    if bad_width:
        name, shape, have_in, have_out = bad_width[0]
        cross = [b for b in bad_width if b[0].endswith(("attn2.to_k", "attn2.to_v"))]
        if cross:
            raise IncompatibleWeightsError(
                f"this LoRA was made for a base with cross-attention width {cross[0][1][1]}; this U-Net's is "
                f"{cross[0][2]} (e.g. an SD2.1 LoRA on an SD1.5 model). {len(bad_width)} layers disagree.")
        raise IncompatibleWeightsError(
            f"this LoRA does not fit this U-Net: layer {name} is {have_in}->{have_out} but the LoRA has "
            f"weights of shape {shape} ({len(bad_width)} layers disagree)")
    if missing:
        raise IncompatibleWeightsError(
            f"this LoRA targets {len(set(missing))} layers this U-Net lacks (first: {missing[0]}): "
            f"it was made for another architecture")


def apply_lora(unet, source: str | os.PathLike, adapter_name: str) -> None:
    """Add a LoRA to ``unet`` as a named PEFT adapter (checked first, so a failure changes nothing)."""
    from peft import LoraConfig, set_peft_model_state_dict

    state, alphas, peft_config = read_lora(source)
    check_lora_fits(unet, state)
    if peft_config is not None:
        fields = {k: v for k, v in peft_config.items() if k in LoraConfig.__dataclass_fields__}
        fields.pop("base_model_name_or_path", None)
        try:
            unet.add_adapter(LoraConfig(**fields), adapter_name=adapter_name)
        except (TypeError, ValueError) as e:
            if adapter_name in getattr(unet, "peft_config", {}):
                unet.delete_adapters(adapter_name)
            raise NotAPipelineError(f"LoRA '{source}': adapter_config.json is not a usable LoraConfig ({e})") from None
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
        if getattr(result, "unexpected_keys", None):
            unet.delete_adapters(adapter_name)
            raise IncompatibleWeightsError(f"LoRA '{source}' has weights this U-Net cannot take: {result.unexpected_keys[:3]}")
        return
    from peft.utils import get_peft_model_state_dict

    # diffusers scales by network alphas only when keys carry their component prefix
    prefixed = {f"unet.{k}": v for k, v in state.items()}
    alphas = {f"unet.{k}": v for k, v in alphas.items()} if alphas else None
    unet.load_lora_adapter(prefixed, prefix="unet", network_alphas=alphas, adapter_name=adapter_name)
    wanted = {k for k in state if _DOWN.match(k) or _UP.match(k)}
    loaded = get_peft_model_state_dict(unet, adapter_name=adapter_name).keys()
    if len(loaded) < len(wanted):
        unet.delete_adapters(adapter_name)
        raise IncompatibleWeightsError(f"LoRA '{source}': only {len(loaded)} of its {len(wanted)} weights could be "
                                       f"placed in this U-Net; nothing was applied")
