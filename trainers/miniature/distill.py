"""The SDXS chain on the miniature teacher, one command: tiny decoder, block-removal KD, the MSE
baseline, the FM warmup, SSD, then the shipped fp16 student and the results table.

    python -m trainers.miniature.distill --teacher assets/miniature/teacher     # the whole chain
    python -m trainers.miniature.distill --stages ssd export benchmark          # some stages

The chain is data: ``trainers/configs/distill_chain.yaml`` names each stage's method, config and inputs
(``scripts/distill_gpu.sh`` reads the same table). Each training stage is one trainer run with its YAML in
``trainers/configs/`` (the step counts live there), the teacher overridden by ``--teacher``; the benchmark
stages run their entry points (``python -m benchmarks.<name>``) in a child process. A stage whose ``run_dir/final`` exists is
skipped; a killed stage resumes from its last checkpoint when the command is run again. All stages
share one cache of teacher ODE pairs, made by the first.

Stages of the chain (the default), in order:
  decoder       tiny decoder (Eq. 5)                        -> runs/miniature/decoder/final
  block_kd      block-removed student, output + feature KD  -> runs/miniature/block_kd/final
  mse_baseline  one-step MSE regression (Fig. 6 contrast)   -> runs/miniature/mse_baseline/final
  fm_warmup     one-step feature-matching warmup (Eq. 10)   -> runs/miniature/fm_warmup/final
  ssd           Segmented Score Distillation (Alg. 1)       -> runs/miniature/ssd/final
  export        fp16 copy of the SSD student + tiny decoder -> assets/miniature/sdxs (--export-name,
                --export-vae; parts identical to a shipped pipeline's, the teacher's first, become links)
  benchmark     python -m benchmarks.miniature_sdxs         -> benchmarks/results/miniature_sdxs[_sd4].json

ControlNet and style-LoRA stages (paper section 3.2; run after the chain, when named):
  controlnet_teacher_{edges,depth}  the teacher's ControlNet, trained the usual way
  controlnet_kd_{edges,depth}       student ControlNet, feature KD from the teacher's
  controlnet_ssd_{edges,depth}      student ControlNet, SSD with the teacher's ControlNet in both DMs
  lora_teacher, lora_ssd            pastel-style LoRA of the teacher, then distilled into the student
  decoder_student                   the tiny decoder continued on the student's own latents (text, the
                                    ControlNets, the LoRA); ``export`` then ships it with the student
  export_controls                   fp16 ControlNets + the LoRA -> assets/miniature/{controlnet-*,lora-pastel}
                                    (with --export-name sdxs-sd4: controlnet-edges-sd4, lora-pastel-sd4, ...)
  benchmark_controls                python -m benchmarks.miniature_lora_controlnet on that export's student
                                    and controls -> benchmarks/results/miniature_lora_controlnet[_sd4].json
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from sdxs_core.files import atomic_write, replace_dir
from sdxs_core.paths import CONFIGS, MINIATURE, RESULTS, ROOT

CHAIN_FILE = CONFIGS / "distill_chain.yaml"


def load_chain(path: Path = CHAIN_FILE) -> dict:
    """The table of stages (see the file's header); every input must name a stage of the table."""
    chain = yaml.safe_load(Path(path).read_text())
    stages = chain["stages"]
    for name, stage in stages.items():
        for key, source in stage.get("inputs", {}).items():
            for ref in source if isinstance(source, list) else [source]:
                if ref.split("/", 1)[0] not in stages:
                    raise ValueError(f"{path}: stage {name}: input {key}={ref!r} names no stage")
    return chain


CHAIN_TABLE = load_chain()
TRAIN_STAGES = tuple(n for n, s in CHAIN_TABLE["stages"].items() if "method" in s)
CHAIN = tuple(n for n in CHAIN_TABLE["default"] if n in TRAIN_STAGES)
CONTROL = tuple(CHAIN_TABLE["control"])
STAGES = tuple(CHAIN_TABLE["stages"])
DEFAULT_STAGES = tuple(CHAIN_TABLE["default"])


def method_class(stage: str):
    from trainers.methods import method_class as by_name

    return by_name(CHAIN_TABLE["stages"][stage]["method"])


def _input(ref: str, runs: Path) -> Path:
    """An earlier stage's output: ``stage`` -> RUNS/stage/final, ``stage/file`` -> a file in it."""
    stage, _, file = ref.partition("/")
    return runs / stage / "final" / file if file else runs / stage / "final"


def _stage_sets(stage: str, runs: Path) -> tuple[str, dict]:
    """(config file, overrides) chaining a stage to the outputs of the stages before it."""
    spec = CHAIN_TABLE["stages"][stage]
    sets = {k: runs / v for k, v in {**CHAIN_TABLE.get("files", {}), **spec.get("files", {})}.items()}
    for key, ref in spec.get("inputs", {}).items():
        if isinstance(ref, list):  # optional inputs: the stages done so far
            sets[key] = [str(_input(r, runs)) for r in ref if _input(r, runs).is_dir()]
        else:
            sets[key] = _input(ref, runs)
    sets.update(spec.get("set", {}))
    return spec["config"], sets


def stage_args(stage: str, teacher: Path, runs: Path, extra: list[str], gpu: float = 0.0) -> list[str]:
    """The trainer's command line: its miniature YAML, this chain's teacher and run folders; with
    ``gpu`` > 0, the stage's one-GPU options and its wall-time budget scaled by ``gpu``."""
    config, chained = _stage_sets(stage, runs)
    sets = {"teacher": teacher, "run_dir": runs / stage, "resume": "latest", **chained}
    known = {f.name for f in dataclasses.fields(method_class(stage).config_cls)}
    spec = CHAIN_TABLE["stages"][stage]
    on_gpu = {**spec["gpu"].get("set", {}), "max_minutes": spec["gpu"]["minutes"] * gpu} if gpu and "gpu" in spec else {}
    # later wins: the chain's wiring, every stage's all.KEY, the stage's GPU options, then STAGE.KEY
    settings = [f"{k}={v}" for k, v in sets.items() if k in known]
    settings += [kv.split(".", 1)[1] for kv in extra if kv.startswith("all.") and kv[4:].split("=", 1)[0] in known]
    settings += [f"{k}={v}" for k, v in on_gpu.items()]
    settings += [kv.split(".", 1)[1] for kv in extra if kv.split(".", 1)[0] == stage]
    return ["--config", str(CONFIGS / config)] + [a for kv in settings for a in ("--set", kv)]


def export_fp16(src: Path, dst: Path, vae: Path | None = None, link_to: list[Path] = ()) -> dict:
    """Half-precision copy of a pipeline folder for shipping (~2x smaller; the engine upcasts on the
    CPU), with the VAE of ``vae`` when given (the chain's tiny decoder, so a retrained decoder ships
    without retraining the student, or a teacher's AutoencoderKL). Components identical to those of a
    ``link_to`` folder become links to it."""
    from diffusers import DiffusionPipeline

    from trainers.core.components import load_vae
    from trainers.core.pipeline_folder import write_pipeline_atomically

    pipe = DiffusionPipeline.from_pretrained(str(src), safety_checker=None, requires_safety_checker=False)
    if vae is not None:
        pipe.register_modules(vae=load_vae(vae))
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.half()
    files = {p.name: p.read_text() for p in src.glob("*.json") if p.name != "model_index.json"}
    write_pipeline_atomically(pipe, dst, files, link_to=link_to)
    return {"dir": str(dst), "bytes": sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()),
            "links": {p.name: os.readlink(p) for p in sorted(dst.iterdir()) if p.is_symlink()}}


def export_controls(runs: Path, assets: Path, suffix: str = "") -> list[str]:
    """The distilled ControlNets (fp16) and style LoRA next to the shipped student, where the app finds them
    (``controlnet-edges{suffix}``, ..., ``lora-pastel{suffix}``)."""
    import shutil

    from diffusers import ControlNetModel

    from trainers.core.pipeline_folder import write_pipeline_atomically

    written = []
    for kind in ("edges", "depth"):
        src = runs / f"controlnet_ssd_{kind}" / "final"
        if (src / "config.json").is_file():
            written.append(str(write_pipeline_atomically(ControlNetModel.from_pretrained(src).half(),
                                                         assets / f"controlnet-{kind}{suffix}", {p.name: p.read_text() for p in src.glob("*.json")
                                                          if p.name != "config.json"})))
    lora = runs / "lora_ssd" / "final"
    if lora.is_dir():  # copied as is (temp folder, then swapped in): the file is already what the engine loads
        dst = assets / f"lora-pastel{suffix}"
        tmp = dst.with_name(f".{dst.name}-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(lora, tmp)
        replace_dir(tmp, dst)
        written.append(str(dst))
    return written


def export_suffix(export_name: str) -> str:
    """What names this export's add-ons and results: ``sdxs-sd4`` -> ``-sd4`` (controlnet-edges-sd4, ...)."""
    return export_name.removeprefix("sdxs")


def result_file(stem: str, export_name: str) -> Path:
    """Where a benchmark of this export writes: ``sdxs-sd4`` -> ``benchmarks/results/<stem>_sd4.json``."""
    return RESULTS / f"{stem}{export_suffix(export_name).replace('-', '_')}.json"


def benchmark_controls_args(teacher: Path, runs: Path, assets: Path, n_eval: int, export_name: str) -> list[str]:
    """The ControlNet / LoRA benchmark on this export's student and the controls shipped beside it."""
    return ["--teacher", str(teacher), "--student", str(assets / export_name), "--runs", str(runs),
            "--assets", str(assets), f"--suffix={export_suffix(export_name)}", "--n", str(n_eval),
            "--threads", str(torch.get_num_threads()),
            "--out", str(result_file(CHAIN_TABLE["stages"]["benchmark_controls"]["result"], export_name))]


def entry_point(stage: str, argv: list[str]) -> None:
    """A benchmark stage: its entry point in a child process (training code never imports benchmarks)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", CHAIN_TABLE["stages"][stage]["entry"], *argv], check=True, env=env)


def run(stages, teacher: Path, runs: Path, assets: Path, extra: list[str], n_eval: int, export_name: str = "sdxs",
        export_vae: Path | None = None, gpu: float = 0.0) -> dict:
    from trainers.core.method import main as method_main

    timings = {}
    for stage in stages:
        t0 = time.time()
        if stage in TRAIN_STAGES:
            if (runs / stage / "final").is_dir():
                print(f"[{stage}] done before: {runs / stage / 'final'}", flush=True)
                continue
            method_main(method_class(stage), stage_args(stage, teacher, runs, extra, gpu))
        elif stage == "export":
            vae = export_vae or next((d for d in (runs / "decoder_student" / "final", runs / "decoder" / "final")
                                      if d.is_dir()), None)
            shipped = sorted((p for p in assets.glob("*") if (p / "model_index.json").is_file()),
                             key=lambda p: (p.name != "teacher", p.name))  # the teacher's parts first
            result = export_fp16(runs / "ssd" / "final", assets / export_name, vae,
                                 link_to=shipped)  # e.g. a second decoder: only the vae is new
            print(f"[export] {result}", flush=True)
        elif stage == "export_controls":
            print(f"[export_controls] {export_controls(runs, assets, export_suffix(export_name))}", flush=True)
        elif stage == "benchmark":
            entry_point(stage, ["--teacher", str(teacher), "--runs", str(runs), "--n", str(n_eval),
                                "--threads", str(torch.get_num_threads()),
                                "--out", str(result_file(CHAIN_TABLE["stages"][stage]["result"], export_name))])
        else:
            entry_point(stage, benchmark_controls_args(teacher, runs, assets, n_eval, export_name))
        timings[stage] = round(time.time() - t0, 1)
        print(f"[{stage}] {timings[stage]:.0f} s", flush=True)
    times_file = runs / "distill_times.json"  # merged: a run of some stages keeps the others' times
    previous = json.loads(times_file.read_text()) if times_file.is_file() else {}
    atomic_write(times_file, json.dumps({**previous, **timings}, indent=2))
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(DEFAULT_STAGES),
                        help="default: the chain, export and benchmark; the ControlNet / LoRA stages "
                             f"({', '.join(CONTROL)}, export_controls, benchmark_controls) run when named")
    parser.add_argument("--teacher", type=Path, default=MINIATURE / "teacher")
    parser.add_argument("--runs", type=Path, default=Path("runs/miniature"))
    parser.add_argument("--assets", type=Path, default=MINIATURE)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a stage's option, e.g. --set ssd.max_steps=500, or every stage's with "
                             "all.KEY=VALUE (a smoke run: --set all.num_pairs=256); repeatable")
    parser.add_argument("--export-name", default="sdxs",
                        help="export: the student's folder under --assets (default: sdxs); export_controls names its "
                             "folders with what follows 'sdxs' (sdxs-sd4: controlnet-edges-sd4, lora-pastel-sd4)")
    parser.add_argument("--export-vae", type=Path, default=None,
                        help="export: the codec to ship, a tiny-decoder run or a pipeline folder whose VAE to take "
                             "(default: the chain's decoder_student, else decoder)")
    parser.add_argument("--n-eval", type=int, default=256, help="images per row of the benchmark")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--gpu-budget", type=float, default=0.0, metavar="SCALE",
                        help="scripts/distill_gpu.sh: each training stage's one-GPU options from distill_chain.yaml "
                             "and its wall-time budget (minutes) times SCALE; 0 (default): the configs as they are")
    args = parser.parse_args(argv)
    bad = [kv for kv in args.extra if "." not in kv.split("=", 1)[0] or kv.split(".", 1)[0] not in (*TRAIN_STAGES, "all")]
    if bad:
        parser.error(f"--set takes STAGE.KEY=VALUE with STAGE one of all, {', '.join(TRAIN_STAGES)}; got {bad}")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.stages, args.teacher, args.runs, args.assets, args.extra, args.n_eval, args.export_name, args.export_vae,
        args.gpu_budget)


if __name__ == "__main__":
    main()
