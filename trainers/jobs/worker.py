"""One job, in its own OS process (started by ``accelerate launch``, so it runs on 1 CPU, 1 GPU or
several processes alike): the plan's stages in order, each the method's own training loop.

    accelerate launch --num_processes 1 -m trainers.jobs.worker runs/jobs/0001-my-style

A stage whose ``final/`` exists is done; the others resume from their latest checkpoint, so running
the worker again after a kill continues the job to the same budget. A ``cancel`` file in the job
folder stops it gracefully (a checkpoint first). The main process writes ``progress.json`` after
every step and, at the end, the job's state and its artefact (``output/``).
"""

import os
import shutil
import sys
import time
import traceback
from collections import deque
from pathlib import Path

from sdxs_core.files import atomic_write_json, replace_dir
from trainers.jobs.plan import LORA_FILE, Plan
from trainers.jobs.store import JobStore

CANCEL_FILE = "cancel"
PROGRESS_FILE = "progress.json"
PLAN_FILE = "job.json"
OUTPUT = "output"


class Progress:
    """``progress.json``: stage i of n, its step / total, images/s over the last steps, the stage's ETA,
    and the job's share done (stages count equally; a stage's share is its loop's progress)."""

    def __init__(self, job_dir: Path, stages: list[str], enabled: bool):
        self.path, self.stages, self.enabled = job_dir / PROGRESS_FILE, stages, enabled
        self.window: deque = deque(maxlen=20)
        self._t0, self._share0 = time.time(), 0.0

    def write(self, index: int, phase: str, step: int = 0, steps: int = 0, share: float = 0.0, images_per_step: int = 0):
        if not self.enabled:
            return
        now = time.time()
        self.window.append((now, step))
        rate = 0.0
        if len(self.window) > 1 and self.window[-1][1] > self.window[0][1]:
            rate = (self.window[-1][1] - self.window[0][1]) / (self.window[-1][0] - self.window[0][0])
        eta = (1 - share) * (now - self._t0) / (share - self._share0) if share > self._share0 else None
        atomic_write_json(self.path, {
            "stage": self.stages[index] if index < len(self.stages) else None, "stage_index": index,
            "stages": self.stages, "phase": phase, "step": step, "steps": steps, "stage_share": round(share, 4),
            "job_share": round(min(1.0, (index + share) / len(self.stages)), 4), "steps_per_s": round(rate, 4),
            "images_per_s": round(rate * images_per_step, 2), "stage_eta_s": None if eta is None else round(eta, 1),
            "updated": now})

    def begin(self, index: int, phase: str, share: float = 0.0):
        self._t0, self._share0 = time.time(), share
        self.write(index, phase, share=share)
        self.window.clear()  # rates count from the first step written after this


def publish(plan: Plan, job_dir: Path) -> Path:
    """The last stage's result as the job's artefact in ``output/`` (copied whole, then renamed in)."""
    final = job_dir / plan.stages[-1].name / "final"
    out, tmp = job_dir / OUTPUT, job_dir / f".{OUTPUT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if plan.artefact == "lora":
        tmp.mkdir()
        for name in (LORA_FILE, "train_info.json"):
            if (final / name).is_file():
                shutil.copy2(final / name, tmp / name)
    else:
        shutil.copytree(final, tmp)
    return replace_dir(tmp, out)


def run_job(job_dir: Path, job_id: int | None = None) -> str:
    """Run (or continue) the job in ``job_dir``; returns its end state. ``job_id``: the store row to
    update (main process only); None runs the plan without a store (tests, debugging)."""
    import json

    import torch

    from trainers.core.loop import NonFiniteLossError, TrainingStopped, train

    rank = int(os.environ.get("RANK", "0"))
    main_process = rank == 0
    store = JobStore(job_dir.parent) if job_id is not None and main_process else None
    plan = Plan.from_dict(json.loads((job_dir / PLAN_FILE).read_text()))
    threads = int(os.environ.get("SDXS_TRAIN_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    progress = Progress(job_dir, [s.name for s in plan.stages], main_process)
    cancel = job_dir / CANCEL_FILE

    def end(state: str, reason: str = "") -> str:
        if store is not None:
            store.move(job_id, state, ("running",), reason=reason[:2000])
        return state

    try:
        for i, stage in enumerate(plan.stages):
            config = stage.build_config()
            if (Path(config.run_dir) / "final").is_dir():
                continue
            if cancel.exists():
                return end("cancelled", "cancelled before " + stage.name)
            print(f"[job] stage {i + 1}/{len(plan.stages)}: {stage.name}", flush=True)
            progress.begin(i, "setup")
            method = stage.method_cls(config.validate())
            per_step = config.batch_size * config.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))
            state = {"started": False}

            def on_step(step, i=i, method=method, config=config, per_step=per_step, state=state):
                if not state["started"]:
                    progress.begin(i, "training", method.progress)
                    state["started"] = True
                state["step"], state["count"] = step, state.get("count", 0) + 1
                progress.write(i, "training", step, config.max_steps, method.progress, per_step)

            try:
                train(config, method, on_step=on_step, stop=cancel.exists)
            finally:  # what this process did, so a multi-process run can be checked rank by rank
                atomic_write_json(Path(config.run_dir) / f"rank-{rank}.json",
                                      {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                       "last_step": state.get("step"), "steps_run": state.get("count", 0)})
        if main_process:
            progress.begin(len(plan.stages) - 1, "exporting", 1.0)
            print(f"[job] artefact: {publish(plan, job_dir)}", flush=True)
            progress.begin(len(plan.stages), "done", 1.0)
        return end("finished")
    except TrainingStopped as e:
        print(f"[job] {e}", flush=True)
        return end("cancelled", f"cancelled: {e}")
    except NonFiniteLossError as e:
        print(f"[job] failed: {e}", flush=True)
        return end("failed", str(e))
    except Exception as e:  # any failure ends the job with its reason; the traceback stays in the log
        traceback.print_exc()
        return end("failed", f"{type(e).__name__}: {e}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainers.jobs.worker JOB_DIR", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    job_dir = Path(argv[0]).resolve()
    job_id = int(job_dir.name.split("-", 1)[0])
    state = run_job(job_dir, job_id)
    if int(os.environ.get("RANK", "0")) == 0:
        from trainers.jobs.manager import JobManager

        JobManager(job_dir.parent).tick()  # the next queued job starts now, with or without an app running
    return 0 if state in ("finished", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
