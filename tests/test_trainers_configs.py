"""The YAML under ``trainers/configs``: comments say what an option means (results live in the notebook),
the miniature configs share their bases, and the real-model presets are runnable method configs."""

import json
import re
from pathlib import Path

import pytest
import yaml

from trainers.core.config import load_config, read_yaml_options
from trainers.methods import method_class

CONFIGS = Path(__file__).resolve().parent.parent / "trainers" / "configs"
PRESETS = CONFIGS / "presets"
# a figure, a measurement or a work period: what a run showed, which belongs in docs/notebook/
RESULT = re.compile(r"\bsessions?\b|\d\s*%|\bm?FID\b|\bF1\b|accuracy|\bmeasured\b|\bn = \d|s/it|\bCPU|\bH[12]00\b"
                    r"|\d\s*(?:ms|s|min|h|GB)\b|runs/s\d", re.I)
PAIR_OPTIONS = ("num_prompts", "pair_cache", "num_pairs", "teacher_steps", "teacher_guidance")


def yaml_files(folder: Path = CONFIGS) -> list[Path]:
    return sorted(folder.rglob("*.yaml"))


def comments(path: Path) -> list[tuple[int, str]]:
    """Each comment of a YAML file with its line number (no config value holds a '#')."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.search(r"(?:^|\s)#(.*)$", line)
        if match:
            found.append((number, match.group(1).strip()))
    return found


def method_configs(folder: Path) -> list[Path]:
    """The method configs directly in ``folder`` (not its jobs/ or presets/)."""
    return [p for p in sorted(folder.glob("*.yaml")) if "method" in read_yaml_options(p)]


def test_the_result_pattern_tells_results_from_meanings():
    results = ["measured: 686 steps = 5 min on 2 CPU cores",
               "# 2.3 vs 3.9 % (CFG 1) and 6.2 vs 8.2 % (CFG 5), and a lower x0 error at high noise (runs/s8, README)",
               "latents into blotchy textures (mFID 1247 -> 1879 against the VAE decode); world renders and",
               "measured (2 CPU cores): ~1 s per step. Session 3: 205 steps (4 min) -> edge F1 0.401",
               "Session 20 (H200, ~800-900 steps each): batch 64, rank 32 / lr 3e-4 in the 16x16 stage"]
    meanings = ["the output term on v (1 / alpha_bar_t weights) rather than eps",
                "L1 on 32x32: 8x (the paper's, for 512 px) would leave 8x8 images here",
                "validation uses the first pairs' prompts and control maps; only the count matters",
                "whichever ends first; the cosine LR follows", "never fp16: one-step distillation diverges"]
    assert [bool(RESULT.search(t)) for t in results + meanings] == [True] * len(results) + [False] * len(meanings)


def test_config_comments_say_what_an_option_means_not_what_a_run_showed():
    found = [f"{p.relative_to(CONFIGS)}:{n}: {text}" for p in yaml_files() for n, text in comments(p)
             if RESULT.search(text)]
    assert found == [], "results go to docs/notebook/configs-history.md:\n" + "\n".join(found)
    assert (CONFIGS.parent.parent / "docs" / "notebook" / "configs-history.md").is_file()


def test_student_configs_share_one_pair_base_and_teacher_configs_take_no_pair_options():
    """Every miniature student names miniature_pairs.yaml (one cache file, bar the LoRA's styled pairs); the
    teacher methods learn from renders and name the world's base only."""
    pairs = read_yaml_options(CONFIGS / "miniature_pairs.yaml")
    for path in method_configs(CONFIGS):
        own = yaml.safe_load(path.read_text())
        resolved = read_yaml_options(path)
        if resolved["method"] in ("lora_teacher", "controlnet_teacher"):
            assert own["defaults"] == "miniature_base.yaml" and not set(PAIR_OPTIONS) & set(resolved), path.name
            continue
        assert own["defaults"] == "miniature_pairs.yaml", path.name
        assert not (set(PAIR_OPTIONS) - {"pair_cache"}) & set(own), f"{path.name} restates a pair option"
        expected = "runs/miniature/pairs-pastel.safetensors" if path.name == "lora_ssd_miniature.yaml" else pairs["pair_cache"]
        assert resolved["pair_cache"] == expected, path.name
        config = load_config(method_class(resolved["method"]).config_cls, str(path))
        assert (config.num_pairs, config.teacher_steps, config.teacher_guidance) == (1024, 20, 3.0)


def stub_inputs(config, root: Path) -> None:
    """Empty stand-ins under ``root`` for the models and files a preset names, so it validates offline."""
    for message in config.errors():
        name, value = re.match(r"(\w+)='([^']+)'", message).groups()
        path = root / value
        if name == "prompts":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("a photo of a cat\na watercolor of a lighthouse\n")
        elif "does not exist" in message:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        else:  # a diffusers folder: a pipeline (model_index.json) or a model (config.json)
            path.mkdir(parents=True, exist_ok=True)
            (path / ("model_index.json" if "model_index.json" in message else "config.json")).write_text("{}")


@pytest.mark.parametrize("preset", [p.name for p in method_configs(PRESETS)])
def test_a_real_model_preset_validates_and_dry_runs_with_its_method(preset, tmp_path, monkeypatch, capsys):
    """Each preset is a complete config of its method: only the downloads and earlier stages it names are
    missing here (no other error), and with stand-ins for those its dry run prints the resolved config."""
    from trainers.core.method import main

    path = PRESETS / preset
    cls = method_class(read_yaml_options(path)["method"])
    monkeypatch.chdir(tmp_path)
    config = load_config(cls.config_cls, str(path))
    for message in config.errors():
        assert re.search(r"='(models|data|runs)/", message), f"{preset}: {message}"
    stub_inputs(config, tmp_path)
    assert load_config(cls.config_cls, str(path)).errors() == []
    assert main(cls, ["--config", str(path), "--dry-run"]) is None
    printed = json.loads(capsys.readouterr().out)
    assert printed == config.to_dict() | {"adam_betas": list(config.adam_betas)}
    assert printed["mixed_precision"] == "bf16" and printed["run_dir"].startswith("runs/")


def test_the_presets_cover_every_real_model_stage_and_the_readme_names_each():
    methods = {read_yaml_options(p)["method"] for p in method_configs(PRESETS)}
    assert methods == {"decoder", "block_kd", "fm_warmup", "mse_baseline", "ssd", "controlnet_kd", "controlnet_ssd",
                       "lora_ssd"}
    readme = (PRESETS / "README.md").read_text()
    assert [p.name for p in yaml_files(PRESETS) if p.name not in readme] == []
