"""Training prompts: named sources registered by the worlds that provide them, or a text file with one
prompt a line. The core names no world: ``trainers.miniature`` registers ``miniature`` when imported
(``trainers/__init__.py`` imports it, so the name is known wherever a config is read)."""

import os
from pathlib import Path
from typing import Callable

import torch

PROMPT_SOURCES: dict[str, Callable[[int, int], list[str]]] = {}


def register_prompt_source(name: str, source: Callable[[int, int], list[str]]) -> None:
    """``source(n, seed)`` gives ``n`` prompts; a config's ``prompts: name`` then uses it."""
    PROMPT_SOURCES[name] = source


def prompt_source_error(source: str) -> str | None:
    """Why ``source`` is no prompt source (None when it is one)."""
    if source in PROMPT_SOURCES or Path(source).is_file():
        return None
    names = " or ".join(repr(n) for n in sorted(PROMPT_SOURCES)) or "no registered source"
    return f"prompts={source!r}: use {names}, or a text file with one prompt a line"


def load_prompts(source: str | os.PathLike, n: int, seed: int = 0) -> list[str]:
    if source in PROMPT_SOURCES:
        return PROMPT_SOURCES[source](n, seed)
    lines = [line.strip() for line in Path(source).read_text().splitlines() if line.strip()]
    return lines[:n]


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return text_encoder(ids)[0].float()  # [N, L, D]
