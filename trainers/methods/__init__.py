"""One file per training method of the SDXS paper (Figs. 2-3), all on ``trainers.core``.

``METHODS`` names each by the ``method:`` key of its configs (the file's name), so a table of stages
(``trainers/configs/distill_chain.yaml``) or a config file can say which method runs it."""

import importlib

METHODS = {  # method name -> its class in trainers/methods/<name>.py
    "block_kd": "BlockKD",
    "controlnet_kd": "ControlNetKD",
    "controlnet_ssd": "ControlNetSSD",
    "controlnet_teacher": "ControlNetTeacher",
    "decoder": "DecoderDistill",
    "fm_warmup": "FMWarmup",
    "lora_ssd": "LoRASSD",
    "lora_teacher": "LoRATeacher",
    "mse_baseline": "MSEBaseline",
    "ssd": "SSD",
}


def method_class(name: str):
    """The method class of ``name`` (imported on first use: each pulls in its own dependencies)."""
    if name not in METHODS:
        raise ValueError(f"method={name!r} must be one of {sorted(METHODS)}")
    return getattr(importlib.import_module(f"trainers.methods.{name}"), METHODS[name])
