"""The one-command SDXS chain at toy scale: every stage runs on a tiny teacher through its real YAML,
later stages start from earlier outputs, a rerun skips finished stages, and the fp16 export loads."""

import json

import numpy as np
import pytest
import torch

from sdxs_core import load_engine
from trainers.miniature import distill

TOY = ["all.max_steps=1", "all.num_pairs=4", "all.teacher_steps=2", "all.num_prompts=8", "all.batch_size=2",
       "all.validate_every=0", "all.num_images=2", "decoder.decoder_size=tiny", "lora_ssd.lora_rank=2",
       "lora_teacher.lora_rank=2"]


def test_stage_args_chain_outputs_and_apply_overrides(tmp_path):
    args = distill.stage_args("ssd", tmp_path / "t", tmp_path / "runs", ["ssd.max_steps=7", "all.seed=3", "fm_warmup.lr=1"])
    sets = dict(a.split("=", 1) for a in args[3::2])
    assert args[1].endswith("ssd_miniature.yaml")
    assert sets["student"] == str(tmp_path / "runs" / "fm_warmup" / "final")
    assert sets["vae"] == str(tmp_path / "runs" / "decoder" / "final")
    assert sets["pair_cache"] == str(tmp_path / "runs" / "pairs.safetensors") and sets["resume"] == "latest"
    assert sets["max_steps"] == "7" and sets["seed"] == "3" and "lr" not in sets
    # ControlNet stages chain teacher ControlNet -> KD -> SSD; all.KEY reaches only stages that have KEY
    kd = dict(a.split("=", 1) for a in distill.stage_args("controlnet_kd_edges", tmp_path, tmp_path / "r",
                                                         ["all.num_pairs=4", "all.num_images=2"])[3::2])
    assert kd["control_type"] == "canny" and kd["num_pairs"] == "4" and "num_images" not in kd
    assert kd["teacher_controlnet"] == str(tmp_path / "r" / "controlnet_teacher_edges" / "final")
    ssd = dict(a.split("=", 1) for a in distill.stage_args("controlnet_ssd_depth", tmp_path, tmp_path / "r", [])[3::2])
    assert ssd["controlnet"] == str(tmp_path / "r" / "controlnet_kd_depth" / "final") and ssd["control_type"] == "depth"
    teacher_cn = distill.stage_args("controlnet_teacher_depth", tmp_path, tmp_path / "r", ["all.num_pairs=4", "all.num_images=2"])
    assert "num_pairs=4" not in teacher_cn and "num_images=2" in teacher_cn and "control_type=depth" in teacher_cn


def test_bad_override_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        distill.main(["--set", "ssdd.max_steps=1"])
    assert "ssdd.max_steps=1" in capsys.readouterr().err


def test_benchmark_controls_score_the_named_export_and_its_own_controls(tmp_path):
    from benchmarks import miniature_lora_controlnet

    seen = {}

    def parse(argv):
        seen.update(vars(miniature_lora_controlnet.build_parser().parse_args(argv)))

    parse(distill.benchmark_controls_args(tmp_path / "t", tmp_path / "runs", tmp_path / "assets", 64, "sdxs-sd4"))
    assert seen["student"] == tmp_path / "assets" / "sdxs-sd4" and seen["suffix"] == "-sd4"
    assert str(seen["out"]).endswith("benchmarks/results/miniature_lora_controlnet_sd4.json")
    parse(distill.benchmark_controls_args(tmp_path, tmp_path, tmp_path / "a", 64, "sdxs"))
    assert seen["student"] == tmp_path / "a" / "sdxs" and seen["suffix"] == ""
    assert distill.result_file("miniature_sdxs", "sdxs").name == "miniature_sdxs.json"


def test_whole_chain_runs_resumes_and_exports(tmp_path, mid_teacher_dir):
    torch.set_num_threads(1)
    runs, assets = tmp_path / "runs", tmp_path / "assets"
    times = distill.run(distill.CHAIN + ("export",), mid_teacher_dir, runs, assets, TOY, n_eval=4)
    assert list(times) == [*distill.CHAIN, "export"]
    for stage in distill.CHAIN:
        assert (runs / stage / "final" / "model_index.json").is_file(), stage
    # block-removed student: the MSE and FM runs started from block_kd's output, not from the teacher
    kd = json.loads((runs / "block_kd" / "final" / "unet" / "config.json").read_text())
    for stage in ("mse_baseline", "fm_warmup", "ssd"):
        cfg = json.loads((runs / stage / "final" / "unet" / "config.json").read_text())
        assert cfg["block_out_channels"] == kd["block_out_channels"] and cfg["mid_block_type"] is None
    # SSD ships the tiny decoder; the fp16 export loads and draws what the fp32 student draws
    index = json.loads((assets / "sdxs" / "model_index.json").read_text())
    assert index["vae"][1] == "AutoencoderTiny"
    unet_file = next((assets / "sdxs" / "unet").glob("*.safetensors"))
    from safetensors import safe_open
    from safetensors.torch import load_file
    shipped, chain = (load_file(next((d / "vae").glob("*.safetensors"))) for d in (assets / "sdxs", runs / "decoder" / "final"))
    assert set(shipped) == set(chain)  # the export re-attaches the chain's decoder
    assert all(torch.allclose(shipped[k].float(), chain[k], atol=1e-2) for k in chain)
    with safe_open(str(unet_file), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    full, half = load_engine(runs / "ssd" / "final", device="cpu"), load_engine(assets / "sdxs", device="cpu")
    a = full.generate("a b", seed=1, output_type="np").images
    b = half.generate("a b", seed=1, output_type="np").images
    assert np.abs(a - b).max() < 0.05
    # a second run skips what is done
    again = distill.run(distill.CHAIN, mid_teacher_dir, runs, assets, TOY, n_eval=4)
    assert again == {}

    # ControlNets (teacher -> KD -> SSD) and the style LoRA, shipped next to the student and loadable
    distill.run(distill.CONTROL + ("export_controls",), mid_teacher_dir, runs, assets, TOY, n_eval=4)
    engine = load_engine(assets / "sdxs", controlnet=assets / "controlnet-depth", device="cpu")
    control = np.zeros((64, 64, 3), np.uint8)
    assert engine.generate("a b", seed=1, control_image=control, output_type="np").images.shape == (1, 64, 64, 3)
    name = engine.load_lora(assets / "lora-pastel")
    assert name in engine.loras
    # the decoder continued on the student's latents, with this chain's ControlNets and LoRA, then shipped by export
    sets = dict(a.split("=", 1) for a in distill.stage_args("decoder_student", mid_teacher_dir, runs, [])[3::2])
    assert sets["decoder_init"] == str(runs / "decoder" / "final") and sets["student"] == str(runs / "ssd" / "final")
    assert sets["student_controlnets"] == str([str(runs / f"controlnet_ssd_{k}" / "final") for k in ("edges", "depth")])
    assert sets["student_loras"] == str([str(runs / "lora_ssd" / "final")])
    lora_sets = dict(a.split("=", 1) for a in distill.stage_args("lora_ssd", mid_teacher_dir, runs, [])[3::2])
    assert lora_sets["plain_pair_cache"] == str(runs / "pairs.safetensors")  # restyling reuses the chain's plain pairs
    distill.run(("export",), mid_teacher_dir, runs, assets, TOY, n_eval=4)
    continued = load_file(next((runs / "decoder_student" / "final" / "vae").glob("*.safetensors")))
    shipped = load_file(next((assets / "sdxs" / "vae").glob("*.safetensors")))
    assert all(torch.allclose(shipped[k].float(), continued[k], atol=1e-2) for k in continued)
    assert any(not torch.allclose(continued[k], chain[k]) for k in chain)

    # a second export under another name with the teacher's VAE (how assets/miniature/sdxs-sd4 is made): the text
    # encoder, tokenizer and VAE, unchanged from the teacher's, become links to the shipped teacher's, the U-Net
    # a link to the first export's
    distill.export_fp16(mid_teacher_dir, assets / "teacher")
    distill.run(("export",), mid_teacher_dir, runs, assets, TOY, n_eval=4, export_name="sdxs-kl",
                export_vae=mid_teacher_dir)
    kl = assets / "sdxs-kl"
    teacher_vae = json.loads((mid_teacher_dir / "model_index.json").read_text())["vae"]
    assert json.loads((kl / "model_index.json").read_text())["vae"] == teacher_vae
    assert {p.name for p in kl.iterdir() if p.is_symlink()} >= {"text_encoder", "tokenizer", "vae"}
    assert (kl / "vae").readlink().as_posix() == "../teacher/vae"
    assert (kl / "unet").readlink().as_posix() == "../sdxs/unet"  # the first export's U-Net, stored once
    assert load_engine(kl, device="cpu").generate("a b", seed=1, output_type="np").images.shape == (1, 64, 64, 3)
    # the same student with another codec stores only that codec: its U-Net is a link to the shipped one
    distill.run(("export",), mid_teacher_dir, runs, assets, TOY, n_eval=4, export_name="sdxs-b",
                export_vae=runs / "decoder_student" / "final")
    assert (assets / "sdxs-b" / "unet").readlink().as_posix() == "../sdxs/unet"
    # its ControlNets and LoRA take the name's suffix, so they sit beside the first student's
    distill.run(("export_controls",), mid_teacher_dir, runs, assets, TOY, n_eval=4, export_name="sdxs-kl")
    assert (assets / "lora-pastel-kl" / "pytorch_lora_weights.safetensors").is_file()
    assert (assets / "controlnet-depth-kl" / "config.json").is_file() and (assets / "controlnet-depth").is_dir()


def test_the_chain_is_one_table_read_by_python_and_the_gpu_script(tmp_path):
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "distill_gpu.sh").read_text()
    named = set(re.findall(r"^stage (\w+)", script, re.M))
    assert named and named <= set(distill.TRAIN_STAGES), named - set(distill.TRAIN_STAGES)
    assert "--gpu-budget" in script and "--set ssd" not in script  # budgets and options live in the table
    # a GPU run: the table's options win over the script's all.KEY, the stage's own --set over both
    args = distill.stage_args("ssd_ttur", tmp_path, tmp_path / "r", ["all.lr_schedule=cosine", "ssd_ttur.lr=1"], gpu=0.5)
    sets = [a for a in args[3::2]]
    assert sets.index("lr_schedule=constant") > sets.index("lr_schedule=cosine") and sets[-1] == "lr=1"
    assert "max_minutes=0.625" in sets and f"student={tmp_path / 'r' / 'fm_warmup' / 'final'}" in sets
    assert "max_minutes=0.625" not in distill.stage_args("ssd_ttur", tmp_path, tmp_path / "r", [])
    with pytest.raises(ValueError, match="names no stage"):
        bad = tmp_path / "chain.yaml"
        bad.write_text("default: []\ncontrol: []\nstages:\n  a: {method: ssd, config: x.yaml, inputs: {student: b}}\n")
        distill.load_chain(bad)
    # training code never imports benchmarks: the benchmark stages are entry points
    for path in [*(root / "trainers").rglob("*.py"), *(root / "sdxs_core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "benchmarks" for n in names), path
