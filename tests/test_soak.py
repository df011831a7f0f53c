"""The soak benchmark for ~60 s on the tiny model (what CI runs): it writes the documented fields,
the load ran without errors, the cache stayed bounded and an idle-held live slot was reclaimed."""

import pytest

FIELDS = ("minutes", "rss_mb_after_warmup", "rss_mb_end", "temp_files_max", "errors", "t2i_p95_ms",
          "idle_slot_reclaimed_s")


def test_soak_one_minute(tmp_path):
    from benchmarks import soak
    from benchmarks.results_io import read_results
    from sdxs_core.catalogue import ensure_tiny_model
    from sdxs_core.testkit import write_tiny_controlnet

    outputs = tmp_path / "outputs"
    model, _ = ensure_tiny_model(outputs)
    write_tiny_controlnet(model, outputs / "second-controlnet", seed=9)  # something to switch to
    out = tmp_path / "soak.json"
    soak.main(["--minutes", "1", "--clients", "4", "--switch-s", "8", "--model", str(model),
               "--search-dir", str(outputs), "--backend", "torch", "--out", str(out)])
    report = read_results(out)
    assert all(report[f] is not None for f in FIELDS), report
    assert report["errors"] == 0, report["error_samples"]
    assert report["t2i_requests"] > 0 and report["live_frames"] > 0 and report["switches"] >= 2
    assert len(report["controlnets"]) >= 2
    # bounded: the janitor deleted files as the load made them (its exact bounds: tests/test_limits.py)
    assert report["janitor_deleted"] > 0 and report["temp_files_end"] < report["images_made"]
    assert report["idle_slot_reclaimed_s"] is not None  # the third client got a slot
    assert report["meta"]["command"] and report["backend"] == "torch graphs"
