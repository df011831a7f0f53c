"""Training from the UI, measured through the Train tab's own machinery (``trainers.jobs``: the store,
``accelerate launch`` workers at low priority with a thread cap) on the bundled default model.

Parts (``--parts``, all by default):
  lora_from_lora    quick LoRA-SSD from the shipped pastel teacher LoRA: wall minutes; pastel style share with
                    the LoRA at scale 1 and without it (the world's classifier), prompt accuracy with it
  lora_from_images  quick two-stage job (teacher LoRA, then LoRA-SSD) from 32 uploaded images of a style the
                    project never trained: world renders through a sepia filter, captioned by NAME.txt files.
                    Style score: a logistic-regression probe on the classifier's features that tells sepia
                    renders from plain ones (its held-out accuracy is recorded), on images with / without the LoRA
  controlnet_canny  quick ControlNet-SSD from the shipped teacher edges ControlNet: wall minutes, edge F1 and
                    prompt accuracy of the student with it (the evaluator's held-out controls)
  serving           the live loop's socket client (benchmarks.live_loop) idle, then while a quick job trains
  faults            a quick LoRA job killed (SIGKILL to its process group) three times at random points and
                    resumed each time by a freshly started manager (an app restart): full step count, no
                    checkpoint lost, and its score beside the uninterrupted run's

    python -m benchmarks.train_jobs                          # everything (about an hour on 2 cores)
    python -m benchmarks.train_jobs --parts lora_from_lora serving --n 256
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS, ROOT
ASSETS = ROOT / "assets" / "miniature"
TEACHER_LORA = ASSETS / "lora-pastel-teacher-sd4" / "pytorch_lora_weights.safetensors"
PARTS = ("lora_from_lora", "lora_from_images", "controlnet_canny", "serving", "faults")
STYLE_IMAGES = 32
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)


# ---- data and scores ----------------------------------------------------------------------------------
def sepia(images: np.ndarray) -> np.ndarray:
    """The benchmark's unseen style: the classic sepia matrix, clipped (uint8 in, uint8 out)."""
    return np.clip(images.astype(np.float32) @ SEPIA.T, 0, 255).round().astype(np.uint8)


def write_style_images(folder: Path, n: int = STYLE_IMAGES, seed: int = 7) -> Path:
    """``n`` sepia world renders with their true captions as ``NAME.txt`` (as a user would upload them)."""
    from PIL import Image

    from trainers.miniature import world

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    real = world.render_batch(seed, n)
    for i, (image, caption) in enumerate(zip(sepia(real["images"]), real["captions"])):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(caption + "\n")
    return folder


def fit_style_probe(classifier, n: int = 1024, seed: int = 11) -> tuple[object, float]:
    """A linear probe (logistic regression on the classifier's features) telling sepia renders from
    plain ones; returns it and its accuracy on held-out renders."""
    import torch

    from trainers.miniature import world
    from trainers.miniature.evaluate import classifier_features

    def data(s):
        plain = world.render_batch(s, n)["images"]
        x = classifier_features(classifier, np.concatenate([plain, sepia(plain)]))
        return torch.as_tensor(x, dtype=torch.float32), torch.cat([torch.zeros(n), torch.ones(n)])

    x, y = data(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    probe = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe((x - mean) / std).squeeze(1), y) \
            + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(images) -> np.ndarray:
        f = torch.as_tensor(classifier_features(classifier, images), dtype=torch.float32)
        with torch.no_grad():
            return (probe((f - mean) / std).squeeze(1) > 0).numpy()

    xh, yh = data(seed + 1)
    held_out = float(((probe((xh - mean) / std).squeeze(1) > 0).float() == yh).float().mean())
    return predict, held_out


def lora_scores(lora: Path, n: int, style: str = "pastel", probe=None) -> dict:
    """The default model without and with ``lora`` (scale 1) on the evaluator's held-out prompts."""
    from benchmarks.miniature_lora_controlnet import generate_images, style_share
    from sdxs_core import load_engine
    from trainers.miniature import world
    from trainers.miniature.classifier import load_classifier
    from trainers.miniature.evaluate import read_images, to_uint8

    classifier = load_classifier()
    engine = load_engine(ASSETS / "sdxs-sd4-fast", device="cpu")
    prompts, seeds = [p for p in world.eval_prompts(n // 4) for _ in range(4)], list(range(n))
    off, _ = generate_images(engine, prompts, seeds, 64, 1, 0.0)
    engine.load_lora(str(lora), scale=1.0)
    on, _ = generate_images(engine, prompts, seeds, 64, 1, 0.0)

    def share(images):
        return float(np.mean(probe(to_uint8(images)))) if probe else style_share(classifier, images, style)

    from benchmarks.miniature_lora_controlnet import layout_consistency

    return {"style_on": share(on), "style_off": share(off), "prompt_accuracy": read_images(classifier, on, prompts)[
        "prompt_accuracy"], "prompt_accuracy_off": read_images(classifier, off, prompts)["prompt_accuracy"],
        "layout_consistency": layout_consistency(classifier, off, on), "n": n}


def controlnet_scores(controlnet: Path, n: int) -> dict:
    from sdxs_core import load_engine
    from trainers.miniature.evaluate import evaluate_model

    engine = load_engine(ASSETS / "sdxs-sd4-fast", controlnet=controlnet, device="cpu")
    r = evaluate_model(engine, n=n, control_type="edges", latency_calls=0)
    return {"edge_f1": r["edge_f1"], "prompt_accuracy": r["prompt_accuracy"], "real_edge_f1": r["real_edge_f1"], "n": n}


# ---- running jobs ----------------------------------------------------------------------------------------
def run_job(manager, request, timeout: float = 3600) -> tuple[object, float]:
    t0 = time.time()
    job = manager.submit(request)
    print(f"[train_jobs] job {job.id} {job.name}: {manager.store.folder(job)}", flush=True)
    job = manager.wait(job.id, timeout=timeout, poll=2.0)
    minutes = (time.time() - t0) / 60
    print(f"[train_jobs] job {job.id} {job.state} in {minutes:.1f} min {job.reason}", flush=True)
    if job.state != "finished":
        raise RuntimeError(f"job {job.id} ended {job.state}: {job.reason}\n{manager.view(job.id).log_tail}")
    return job, minutes


def row(job: str, minutes, style_on=None, style_off=None, prompt_accuracy=None, edge_f1=None, **extra) -> dict:
    return {"job": job, "minutes": None if minutes is None else round(minutes, 2), "style_on": style_on,
            "style_off": style_off, "prompt_accuracy": prompt_accuracy, "edge_f1": edge_f1, **extra}


def part_lora_from_lora(manager, n):
    from trainers.jobs.plan import JobRequest

    job, minutes = run_job(manager, JobRequest("lora", name="bench-lora-from-lora", style_lora=str(TEACHER_LORA)))
    s = lora_scores(manager.view(job.id).artefact_file, n)
    return row("lora_from_lora", minutes, s["style_on"], s["style_off"], s["prompt_accuracy"],
               prompt_accuracy_off=s["prompt_accuracy_off"], layout_consistency=s["layout_consistency"],
               steps=_steps(manager, job), n=n, style="pastel (the world classifier's style head)")


def part_lora_from_images(manager, n):
    from trainers.jobs.plan import JobRequest
    from trainers.miniature.classifier import load_classifier

    folder = write_style_images(manager.root / "bench-data" / "sepia")
    job, minutes = run_job(manager, JobRequest("lora", name="bench-lora-from-images", images=str(folder)))
    probe, held_out = fit_style_probe(load_classifier())
    s = lora_scores(manager.view(job.id).artefact_file, n, probe=probe)
    stages = {m["stage"] for m in manager.view(job.id).metrics}
    return row("lora_from_images", minutes, s["style_on"], s["style_off"], s["prompt_accuracy"],
               prompt_accuracy_off=s["prompt_accuracy_off"], layout_consistency=s["layout_consistency"],
               steps=_steps(manager, job), stages=sorted(stages), n=n,
               style=f"sepia ({STYLE_IMAGES} uploaded world renders through the sepia matrix, NAME.txt captions)",
               style_probe_held_out_accuracy=round(held_out, 4))


def part_controlnet(manager, n):
    from trainers.jobs.plan import JobRequest

    job, minutes = run_job(manager, JobRequest("controlnet", name="bench-controlnet-canny", control_type="canny"))
    s = controlnet_scores(manager.view(job.id).artefact, n)
    return row("controlnet_canny", minutes, prompt_accuracy=s["prompt_accuracy"], edge_f1=s["edge_f1"],
               real_edge_f1=s["real_edge_f1"], steps=_steps(manager, job), n=n)


def _steps(manager, job) -> dict:
    folder = manager.store.folder(job)
    return {s["name"]: json.loads((folder / s["name"] / "final" / "train_info.json").read_text()).get("steps")
            for s in manager.view(job.id).plan["stages"]}


def part_serving(manager, frames: int) -> dict:
    import torch

    from benchmarks.live_loop import measure_socket
    from sdxs_core.devices import serving_threads
    from sdxs_core.hub import ModelHub
    from trainers.jobs.plan import JobRequest

    threads = serving_threads()
    torch.set_num_threads(threads)
    hub = ModelHub(device="cpu")
    hub.start(hub.default_model())
    idle = measure_socket(hub, frames=frames, threads=threads)
    job = manager.submit(JobRequest("lora", name="bench-serving", style_lora=str(TEACHER_LORA)))
    deadline = time.time() + 600
    while (manager.view(job.id).progress or {}).get("phase") != "training" and time.time() < deadline:
        manager.tick()
        time.sleep(1)
    busy = measure_socket(hub, frames=frames, threads=threads)
    progress = manager.view(job.id).progress or {}
    manager.cancel(job.id)
    manager.wait(job.id, timeout=300)
    return {"fps_idle": idle["fps"], "fps_training": busy["fps"], "latency_ms_p95_idle": idle["latency_ms_p95"],
            "latency_ms_p95_training": busy["latency_ms_p95"], "serving_threads": threads,
            "training_threads": manager.threads, "training_nice": manager.nice, "frames": frames,
            "training_images_per_s": progress.get("images_per_s"), "model": hub.model_key}


def part_faults(manager, n: int, kills: int = 3, seed: int = 0) -> dict:
    """Kill the worker's process group at random steps, restart the manager (as an app restart would),
    resume; check the checkpoints and the final step count."""
    from trainers.jobs.manager import JobManager
    from trainers.jobs.plan import JobRequest

    rng = random.Random(seed)
    job = manager.submit(JobRequest("lora", name="bench-faults", style_lora=str(TEACHER_LORA)))
    plan_steps = manager.view(job.id).plan["stages"][0]["config"]["max_steps"]
    run = manager.store.folder(job) / "lora_ssd"
    lost, log, resumed = [], [], 0
    for k in range(kills):
        target = rng.randint(plan_steps * k // (kills + 1) + 5, plan_steps * (k + 1) // (kills + 1))
        while (manager.view(job.id).progress or {}).get("step", 0) < target:
            if manager.store.get(job.id).state != "running":
                raise RuntimeError(f"job {job.id} ended before kill {k + 1}")
            time.sleep(0.5)
        before = {p.name for p in run.glob("checkpoint-*")}
        pid = manager.store.get(job.id).pid
        os.killpg(pid, signal.SIGKILL)
        step = (manager.view(job.id).progress or {}).get("step")
        time.sleep(1)
        manager = JobManager(manager.root, threads=manager.threads)  # the app restarted
        manager.tick()
        state = manager.store.get(job.id).state
        after = {p.name for p in run.glob("checkpoint-*")}
        lost += sorted(before - after)
        log.append({"kill": k + 1, "at_step": step, "state_after_restart": state, "checkpoints": sorted(after)})
        manager.resume(job.id)
        resumed += 1
    job = manager.wait(job.id, timeout=3600, poll=2.0)
    info = json.loads((manager.view(job.id).artefact / "train_info.json").read_text())
    s = lora_scores(manager.view(job.id).artefact_file, n)
    return {"kills": kills, "resumed": resumed, "steps_expected": plan_steps, "steps_done": info["steps"],
            "checkpoints_lost": lost, "state": job.state, "events": log, "style_on": s["style_on"],
            "prompt_accuracy": s["prompt_accuracy"], "n": n}


def markdown_table(report: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f} %"

    lines = ["| quick job | wall | style with / without the LoRA | prompt acc. | edge F1 |", "|---|---:|---:|---:|---:|"]
    for r in report.get("rows", []):
        style = "–" if r["style_on"] is None else f"{pct(r['style_on'])} / {pct(r['style_off'])}"
        f1 = "–" if r["edge_f1"] is None else f"{r['edge_f1']:.3f}"
        lines.append(f"| {r['job']} | {r['minutes']:.1f} min | {style} | {pct(r['prompt_accuracy'])} | {f1} |")
    if "serving" in report:
        s = report["serving"]
        lines.append(f"\nLive loop (socket client) while a job trains: **{s['fps_training']:.1f} FPS** "
                     f"(idle {s['fps_idle']:.1f}).")
    if "faults" in report:
        f = report["faults"]
        lines.append(f"Killed {f['kills']} times and resumed: {f['steps_done']} / {f['steps_expected']} steps, "
                     f"{len(f['checkpoints_lost'])} checkpoints lost.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--jobs-dir", type=Path, default=ROOT / "runs" / "bench-jobs",
                        help="a job store of its own (emptied first), so the app's jobs are untouched")
    parser.add_argument("--n", type=int, default=256, help="images per score")
    parser.add_argument("--frames", type=int, default=300, help="serving: socket frames per measurement")
    parser.add_argument("--threads", type=int, default=None, help="training threads (default: the app's default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_jobs.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trainers.jobs.manager import JobManager

    shutil.rmtree(args.jobs_dir, ignore_errors=True)
    manager = JobManager(args.jobs_dir, threads=args.threads)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    rows = {r["job"]: r for r in previous.get("rows", [])}
    report = dict(previous)
    for part in args.parts:
        print(f"[train_jobs] {part}", flush=True)
        if part == "lora_from_lora":
            rows["lora_from_lora"] = part_lora_from_lora(manager, args.n)
        elif part == "lora_from_images":
            rows["lora_from_images"] = part_lora_from_images(manager, args.n)
        elif part == "controlnet_canny":
            rows["controlnet_canny"] = part_controlnet(manager, args.n)
        elif part == "serving":
            report["serving"] = part_serving(manager, args.frames)
        else:
            report["faults"] = part_faults(manager, args.n)
        report["rows"] = [rows[k] for k in ("lora_from_lora", "lora_from_images", "controlnet_canny") if k in rows]
        write_results(args.out, report, command_line("benchmarks.train_jobs", argv))
        print(json.dumps({k: report.get(k) for k in ("rows", "serving", "faults") if k in report}, indent=1), flush=True)
    print(markdown_table(report))
    return report


if __name__ == "__main__":
    main()
