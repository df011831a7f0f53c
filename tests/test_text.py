import json
import os
import re

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

from trainers.miniature import text, world

SENTENCES = [
    "a red triangle above a blue circle on a yellow background",
    "an orange heart to the right of a white cross on a pink background",
    "a cyan star in the center on a black background",
    "A purple Diamond at the bottom on a gray background.",
]
UNKNOWN = ["a zebra beside a blue kettle", "an orange heart, 42 times!", "café naïve ünïcode"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    text.save_tokenizer(text.build_tokenizer(text.training_captions(2000)), str(out))
    return str(out)


def _reference_ids(sentence: str, folder: str) -> list[int]:
    """OpenAI's original CLIP BPE (ASCII-only word split), read straight from vocab.json and merges.txt."""
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
        ranks = {tuple(line.split()): i for i, line in enumerate(f.read().splitlines()[1:])}
    ids = [vocab[text.BOS]]
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", sentence.lower()):
        parts = [*word[:-1], word[-1] + text.SUFFIX]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [vocab[p] for p in parts]
    return ids + [vocab[text.EOS]]


def test_every_caption_word_is_one_token(saved):
    tok = CLIPTokenizer.from_pretrained(saved)
    words = text.caption_words()
    assert {"a", "an", "above", "left", "background", "heart", "purple", "center"} <= set(words)
    for word in words:
        assert tok.tokenize(word) == [word + text.SUFFIX]
    for caption in world.eval_prompts(50):
        assert len(tok.tokenize(caption)) == len(caption.split())


def test_both_classes_and_raw_files_agree(saved):
    from_dir = CLIPTokenizer.from_pretrained(saved)
    fast = CLIPTokenizerFast.from_pretrained(saved)
    from_files = CLIPTokenizer(vocab=os.path.join(saved, "vocab.json"), merges=os.path.join(saved, "merges.txt"))
    for sentence in SENTENCES + UNKNOWN[:2]:
        ids = from_dir(sentence).input_ids
        assert ids == fast(sentence).input_ids == from_files(sentence).input_ids
        assert ids == _reference_ids(sentence, saved)


def test_special_tokens_and_padding(saved):
    tok = CLIPTokenizer.from_pretrained(saved)
    assert tok.model_max_length == text.MAX_LENGTH == 77
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    batch = tok(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert batch.input_ids.shape == (len(SENTENCES), 77)
    assert (batch.input_ids[:, 0] == tok.bos_token_id).all() and (batch.input_ids[:, -1] == tok.eos_token_id).all()
    assert tok(" ".join(["red"] * 100), truncation=True).input_ids.__len__() == 77


def test_unknown_words_fall_back_to_characters(saved):
    tok = CLIPTokenizer.from_pretrained(saved)
    for sentence in UNKNOWN:
        ids = tok(sentence).input_ids
        assert tok.unk_token_id not in ids[1:-1]
        # CLIP decodes every end-of-word as a space, so only the characters must survive.
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == sentence.lower().replace(" ", "")
    assert tok.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]


def test_text_encoder_config_runs_and_pools_at_eos(saved):
    tok = CLIPTokenizer.from_pretrained(saved)
    config = text.build_text_encoder_config(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    assert (config.vocab_size, config.max_position_embeddings) == (len(tok), 77)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    ids = tok(SENTENCES[:2], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids)
    assert out.last_hidden_state.shape == (2, 77, 32)
    eos = (ids == tok.eos_token_id).int().argmax(1)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), eos])


def test_default_config_sizes():
    config = text.build_text_encoder_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (128, 4, 4, 512)
    assert config.eos_token_id == config.vocab_size - 1


@pytest.mark.skipif(not os.path.isfile(os.path.join(text.DEFAULT_DIR, "tokenizer.json")), reason="no saved tokenizer in assets")
def test_saved_asset_is_a_valid_tokenizer():
    tok = text.load_tokenizer()
    assert tok.model_max_length == 77
    for word in text.caption_words():
        assert len(tok.tokenize(word)) == 1
    for sentence in SENTENCES:
        assert tok(sentence).input_ids == _reference_ids(sentence, text.DEFAULT_DIR)
