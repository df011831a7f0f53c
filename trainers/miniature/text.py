"""A CLIP-format tokenizer and a small CLIP text-encoder config for the miniature world's captions.

Every caption word is one token, so the tiny text encoder spends no capacity on spelling. The files
keep CLIP's layout (the 256 byte-level characters, the same with the `</w>` end-of-word suffix, one
token per merge, then the special tokens last), so diffusers loads them like any CLIP tokenizer and a
word outside the grammar falls back to characters instead of failing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTokenizer

from sdxs_core.files import replace_dir

from . import world

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
SUFFIX = "</w>"
DEFAULT_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "assets", "miniature", "tokenizer"))
# CLIP's own word split; copied so the trainer sees exactly the pieces CLIPTokenizer will see.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def caption_words() -> list[str]:
    """Every word the caption grammar can produce, from the world's tables rather than from samples."""
    phrases = [*world.SHAPES, *world.COLOURS, *world.BACKGROUNDS, *world.POSITIONS.values(), *world.RELATIONS.values()]
    return sorted({w for p in [*phrases, "a an on background"] for w in p.split()})


def training_captions(n: int = 20000, seed: int = 0) -> list[str]:
    """Captions of the train split only, so the tokenizer never learns from held-out combinations."""
    specs, _ = world.sample_specs(seed, n, "plain", "train")
    return [world.caption(s) for s in specs]


def _byte_alphabet() -> list[str]:
    """CLIP's byte -> printable character table, in CLIP's order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def train_merges(captions: list[str]) -> list[tuple[str, str]]:
    """BPE merges learnt by the `tokenizers` trainer until no pair is left, i.e. every word is one token."""
    tok = Tokenizer(models.BPE(end_of_word_suffix=SUFFIX, continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # an upper bound: training stops once no pair is left
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=SUFFIX,
    )
    tok.train_from_iterator(captions, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + `</w>`, one token per merge, then BOS and EOS last.

    EOS has the highest id, which CLIPTextModel's legacy pooling (argmax of input_ids) relies on."""
    base = _byte_alphabet()
    tokens = [*base, *(c + SUFFIX for c in base), *("".join(m) for m in merges), BOS, EOS]
    if len(set(tokens)) != len(tokens):
        raise ValueError("merges produced a token twice")
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer(captions: list[str] | None = None) -> CLIPTokenizer:
    """Train on `captions` (default: 20,000 train-split captions) and wrap as a CLIPTokenizer."""
    merges = train_merges(captions if captions is not None else training_captions())
    tokenizer = CLIPTokenizer(vocab=clip_vocab(merges), merges=merges, model_max_length=MAX_LENGTH)
    broken = [w for w in caption_words() if len(tokenizer.tokenize(w)) != 1]
    if broken:
        raise ValueError(f"caption words that are not single tokens: {broken}")
    return tokenizer


def save_tokenizer(tokenizer: CLIPTokenizer, out_dir: str) -> None:
    """tokenizer.json and config via save_pretrained, plus CLIP's vocab.json/merges.txt, written atomically."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        staged = os.path.join(tmp, "tokenizer")
        tokenizer.save_pretrained(staged)
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        with open(os.path.join(staged, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(model["vocab"], f, ensure_ascii=False)
        with open(os.path.join(staged, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.writelines(" ".join(m) + "\n" for m in model["merges"])
        replace_dir(staged, out_dir)


def load_tokenizer(path: str = DEFAULT_DIR) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(path)


def build_text_encoder_config(
    tokenizer: CLIPTokenizer | None = None,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 512,
) -> CLIPTextConfig:
    """A small CLIPTextConfig whose vocabulary and special ids match the tokenizer.

    Without a tokenizer, the saved one in assets is used, or an identical one is trained (about 1 s)."""
    if tokenizer is None:
        tokenizer = load_tokenizer() if os.path.isfile(os.path.join(DEFAULT_DIR, "tokenizer.json")) else build_tokenizer()
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )


def pretrain_text_encoder(encoder, tokenizer: CLIPTokenizer, steps: int = 400, batch: int = 256, lr: float = 1e-3,
                          seed: int = 0, length: int = 24) -> dict:
    """Teach the encoder to read captions before the U-Net ever sees it: the pooled (EOS) state must
    predict every stated attribute (shapes, colours, position or relation, background).

    SD conditions on a pretrained, frozen CLIP text tower; this is the miniature world's stand-in.
    Learning text and image jointly from scratch costs the U-Net thousands of steps of an unreadable
    condition (the first teacher drew the right colours in the right places as shapeless blobs).
    The mask is causal and captions are under ``length`` tokens, so training on the first ``length``
    positions gives the EOS state exactly as at 77 tokens, ~3x cheaper."""
    import torch
    import torch.nn.functional as F

    from .classifier import default_heads, targets

    heads = {k: v for k, v in default_heads().items() if k != "style"}  # captions never state the style
    hidden = encoder.config.hidden_size
    probes = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v)) for k, v in heads.items()})
    opt = torch.optim.AdamW([*encoder.parameters(), *probes.parameters()], lr=lr, weight_decay=1e-2)
    encoder.train()
    loss = None
    for step in range(steps):
        specs, _ = world.sample_specs(seed * 1_000_003 + step, batch, "plain", "train")
        ids = tokenizer([world.caption(s) for s in specs], padding="max_length", max_length=length,
                        truncation=True, return_tensors="pt").input_ids
        y = targets(specs, heads)
        pooled = encoder(ids).pooler_output
        loss = sum(F.cross_entropy(probes[k](pooled), y[k], ignore_index=-100) for k in heads)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    encoder.eval()
    with torch.no_grad():  # held-out combinations: can the encoder read captions it never saw?
        specs, _ = world.sample_specs(seed + 7, 1024, "plain", "eval")
        ids = tokenizer([world.caption(s) for s in specs], padding="max_length", max_length=MAX_LENGTH,
                        truncation=True, return_tensors="pt").input_ids
        pooled, y = encoder(ids).pooler_output, targets(specs, heads)
        right = torch.ones(len(specs), dtype=torch.bool)
        for k in heads:
            known = y[k] != -100
            right &= ~known | (probes[k](pooled).argmax(-1) == y[k])
    return {"steps": steps, "final_loss": None if loss is None else round(loss.item(), 4), "heldout_caption_accuracy": round(right.float().mean().item(), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and save the miniature world's CLIP tokenizer.")
    parser.add_argument("--out", default=DEFAULT_DIR, help="output folder (default: assets/miniature/tokenizer)")
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, args.out)
    words = caption_words()
    print(f"wrote {args.out}: {len(tokenizer)} tokens, {len(words)} caption words, all single tokens")


if __name__ == "__main__":
    main()
