"""The README's promises, run: its Python example on the bundled model, and its quick-start scripts exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BUNDLED = ROOT / "assets" / "miniature" / "sdxs-sd4-fast"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README.md has no Python example"
    return blocks[0]


def test_readme_example_is_short_and_uses_the_real_weights():
    code = python_example()
    assert len(code.strip().splitlines()) <= 5, code
    assert re.search(r'load_engine\("sdxs-512-[a-z0-9.-]+"', code), "the example should load a released model"


@pytest.mark.skipif(not (BUNDLED / "model_index.json").is_file(), reason="bundled model not present")
def test_readme_example_runs_on_the_bundled_model(tmp_path, monkeypatch):
    """The same lines with the released model swapped for the bundled one (and the CPU for CUDA)."""
    code, swaps = re.subn(r'load_engine\("sdxs-512-[a-z0-9.-]+"[^)\n]*\)',
                          'load_engine("miniature-sd4-fast", device="cpu")', python_example())
    assert swaps == 1, "the example's load_engine(...) call changed shape: update this test with it"
    saved = re.findall(r'\.save\("([^"]+)"\)', code)
    assert saved, "the example should save its image"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    from PIL import Image

    with Image.open(tmp_path / saved[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
        assert max(hi - lo for lo, hi in image.getextrema()) > 32, "a flat image: the model drew nothing"


@pytest.mark.parametrize("script", ["scripts/run.sh", "scripts/test.sh"])
def test_quick_start_scripts_exist(script):
    assert f"bash {script}" in README
    text = (ROOT / script).read_text()
    assert text.startswith("#!/usr/bin/env bash") and "scripts/setup.sh" in text


def test_readme_stays_a_front_page():
    assert len(README.splitlines()) <= 250 and len(README.encode()) <= 15_500
    for phrase in ("session ", "this CPU", "runs/s"):
        assert phrase not in README, f"notebook wording in the README: {phrase!r} (it goes to docs/notebook/)"
    for link in re.findall(r"\]\(((?:docs/|[A-Z]+\.)[^)#]*)\)", README):
        if link != "docs/backends.md":  # written on another branch
            assert (ROOT / link).exists(), f"README links to a missing {link}"


def test_docs_links_resolve():
    """Relative links between the docs pages and the notebook point at files that exist."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            target = (page.parent / link).resolve()
            if target.name != "backends.md":  # written on another branch
                assert target.exists(), f"{page.relative_to(ROOT)} links to a missing {link}"
