"""The layout-consistency diagnosis: its ceiling rows and its split of a LoRA's pairs, on renders whose truth is known."""

import numpy as np

from benchmarks.layout_consistency import (ASSETS, ceiling_row, lora_pair_split, markdown_tables, restyled_renders,
                                           roundtrip)
from trainers.core.components import load_vae
from trainers.miniature.classifier import load_classifier


def test_restyled_renders_differ_only_in_style_and_the_ceiling_reads_them_alike():
    classifier, r = load_classifier(), restyled_renders(64)
    assert r["plain"].shape == r["pastel"].shape == (64, 64, 64, 3) and len(r["captions"]) == 64
    assert (r["plain"] != r["pastel"]).any(axis=(1, 2, 3)).all()  # every scene restyled
    row = ceiling_row(classifier, "renders", r["plain"], r["pastel"], r["captions"])
    assert row["plain_legibility"] > 0.9 and row["pastel_legibility"] > 0.9 and row["layout_consistency"] > 0.9
    other = ceiling_row(classifier, "shuffled", r["plain"], np.roll(r["pastel"], 1, axis=0), r["captions"])
    assert other["layout_consistency"] < 0.2 and other["pastel_legibility"] < 0.2


def test_roundtrip_through_the_teachers_vae_keeps_scenes_legible():
    classifier, r = load_classifier(), restyled_renders(64)
    vae = load_vae(ASSETS / "teacher-sd4").eval()
    out = roundtrip(r["plain"], vae, vae, batch=32)
    assert out.shape == (64, 64, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.abs(out * 255 - r["plain"]).mean() < 12  # a reconstruction, not another image
    assert ceiling_row(classifier, "vae", out, roundtrip(r["pastel"], vae, vae), r["captions"])["plain_legibility"] > 0.7


def test_lora_pair_split_separates_pairs_by_the_off_images_legibility():
    classifier, r = load_classifier(), restyled_renders(64)
    prompts = r["captions"][:32] + r["captions"][33:] + r["captions"][:1]  # the second half's prompts are another scene's
    on = r["pastel"].copy()
    on[:16] = np.roll(on[:16], 1, axis=0)  # a quarter of the pairs: the "LoRA" drew another scene
    split = lora_pair_split(classifier, r["plain"], on, prompts)
    assert 0.4 < split["off_legibility"] < 0.6  # the first half is read as its prompt
    assert split["consistency_off_read_right"] < 0.6  # half of those changed scene
    assert split["consistency_off_read_wrong"] > 0.9  # same scenes, read alike even where the prompt disagrees
    assert abs(split["layout_consistency"] - 0.75) < 0.1
    table = markdown_tables({"ceiling": [ceiling_row(classifier, "renders", r["plain"], r["pastel"], r["captions"])],
                             "lora_pairs": [{"model": "x", **split}]})
    assert f"{split['layout_consistency']:.1%}" in table and "| renders |" in table


def test_main_writes_the_ceiling_and_the_shipped_loras_pairs(tmp_path):
    import json

    from benchmarks.layout_consistency import main

    out = tmp_path / "lc.json"
    main(["--n", "8", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["path"] for r in report["ceiling"]][:2] == ["renders", "teacher's VAE"] and len(report["ceiling"]) == 3
    models = [r["model"] for r in report["lora_pairs"]]
    assert models == ["one-step student, its decoder", "one-step student, teacher's VAE"]
    for r in report["lora_pairs"]:  # the split recombines into the whole
        parts = [(r["off_legibility"], r["consistency_off_read_right"]),
                 (1 - r["off_legibility"], r["consistency_off_read_wrong"])]
        assert abs(sum(w * c for w, c in parts if c is not None) - r["layout_consistency"]) < 1e-9
