"""Where a model's files are: a preset, a local folder or a hub id, resolved to a local folder, with
offline-aware errors. Nothing here loads weights, so the engine can resolve a LoRA without the loaders."""

import os
import socket
from pathlib import Path

from .errors import ModelNotFoundError, ModelUnavailableError, NotAPipelineError
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
