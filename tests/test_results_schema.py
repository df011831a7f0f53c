"""One schema for ``benchmarks/results/``: every file carries the ``meta`` block of ``benchmarks.results_io``,
and every file is produced by a writer under ``benchmarks/`` (no hand-assembled files, no renamed copies)."""

import json
import re
import sys

import pytest

from benchmarks import results_io
from sdxs_core.paths import RESULTS, ROOT

REQUIRED = ("date", "commit", "command", "device", "versions")
NOT_WRITERS = ("__init__.py", "results_io.py", "report.py")
WRITERS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name not in NOT_WRITERS)
FILES = sorted(RESULTS.glob("*.json"))


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_results_file_has_meta(name):
    report = json.loads((RESULTS / name).read_text())
    meta = report.get("meta")
    assert isinstance(meta, dict), f"{name}: no meta block (write it with benchmarks.results_io.write_results)"
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, f"{name}: meta lacks {missing}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", meta["date"]), meta["date"]
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", meta["commit"]), meta["commit"]
    assert meta["command"].startswith("python -m benchmarks."), meta["command"]
    assert meta["device"].get("cpu") or meta["device"].get("gpu"), f"{name}: meta.device names no CPU or GPU"
    assert meta["versions"].get("python"), f"{name}: meta.versions has no python"
    assert list(report)[0] == "meta", f"{name}: meta is not the first key"


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_results_file_has_a_writer(name):
    """Named in a writer's source (its default ``--out`` or the documented command that makes it), and the
    command in its meta runs that writer."""
    writers = [p for p in WRITERS if name in p.read_text()]
    assert writers, f"{name}: no benchmark under benchmarks/ names it; remove it or document its command"
    meta = json.loads((RESULTS / name).read_text()).get("meta", {})
    module = meta.get("command", "").split()[2] if "command" in meta else None
    assert module in {f"benchmarks.{p.stem}" for p in writers}, f"{name}: made by {module}, named by {writers}"


@pytest.mark.parametrize("writer", [p.name for p in WRITERS])
def test_writers_use_the_shared_writer(writer):
    source = (ROOT / "benchmarks" / writer).read_text()
    if "--out" not in source:
        pytest.skip(f"{writer} writes no results file")
    assert "write_results" in source, f"{writer} writes results without benchmarks.results_io.write_results"
    assert ".write_text(json.dumps" not in source and "write_json(" not in source, writer


def test_no_renamed_copies():
    copies = [p.name for p in FILES if re.search(r"_(session\d+|cpu_chain|old|backup|v\d+)\.json$", p.name)]
    assert not copies, f"history lives in git, not in renamed copies: {copies}"


def test_write_results_puts_meta_first(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--n", "4"])
    path = results_io.write_results(tmp_path / "x.json", {"meta": "stale", "rows": [{"a": 1}]},
                                    results_io.command_line("benchmarks.example", ["--n", "4", "--out", "a b.json"]))
    report = json.loads(path.read_text())
    assert list(report) == ["meta", "rows"] and report["rows"] == [{"a": 1}]
    assert report["meta"]["command"] == "python -m benchmarks.example --n 4 --out 'a b.json'"
    assert all(k in report["meta"] for k in REQUIRED)
    assert results_io.command_line("benchmarks.example", None) is None


def test_results_md_is_current():
    from benchmarks import report

    assert report.main(["--check"]) == 0, "docs/results.md is stale: run python -m benchmarks.report"


def test_report_check_notices_a_changed_figure(tmp_path):
    from benchmarks import report

    results, page = tmp_path / "results", tmp_path / "results.md"
    results.mkdir()
    rows = {"rows": [{"model": "a", "prompt_accuracy": 0.5, "latency_ms": 12.5}]}
    results_io.write_results(results / "example.json", rows, "python -m benchmarks.example")
    assert report.main(["--results", str(results), "--out", str(page)]) == 0
    text = page.read_text()
    assert "| a | 50.0% | 12.5 |" in text and "`python -m benchmarks.example`" in text
    assert report.main(["--check", "--results", str(results), "--out", str(page)]) == 0
    rows["rows"][0]["prompt_accuracy"] = 0.75
    results_io.write_results(results / "example.json", rows, "python -m benchmarks.example")
    assert report.main(["--check", "--results", str(results), "--out", str(page)]) == 1
