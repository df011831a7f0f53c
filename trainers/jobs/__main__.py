"""Training jobs from a shell: the same store, queue and workers as the app's Train tab.

    python -m trainers.jobs submit lora --style-lora assets/miniature/lora-pastel-teacher-sd4 --name pastel
    python -m trainers.jobs submit lora --images data/my-style --trigger sks --preset quick --wait
    python -m trainers.jobs submit controlnet --control-type canny --set controlnet_ssd.max_steps=400
    python -m trainers.jobs list
    python -m trainers.jobs show 3
    python -m trainers.jobs cancel 3
    python -m trainers.jobs resume 3 --wait
    python -m trainers.jobs watch            # run the queue in the foreground until it is empty

A submitted job starts at once when its device is free and runs in the background; the queue moves on
by itself when a job ends. ``--jobs-dir`` picks the store (default: runs/jobs, the app's default).
"""

import argparse
import json
import sys
import time

from trainers.jobs.manager import DEFAULT_ROOT, JobManager, default_threads
from trainers.jobs.plan import CONTROL_TYPES, DEVICES, PRESETS, JobError, JobRequest, preset_names
from trainers.jobs.store import ENDED


def _overrides(items: list[str]) -> dict:
    """``STAGE.KEY=VALUE`` strings -> {stage: {key: value}} (values typed by the stage's config)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise JobError(f"--set expects STAGE.KEY=VALUE (e.g. lora_ssd.max_steps=300), got {item!r}")
        out.setdefault(stage.strip(), {})[option.strip()] = value
    return out


def _line(job) -> str:
    when = time.strftime("%m-%d %H:%M", time.localtime(job.created))
    reason = f"  {job.reason[:80]}" if job.reason else ""
    return f"{job.id:>4}  {job.state:<11} {job.kind:<10} {job.device:<5} {when}  {job.name}{reason}"


def _progress(view) -> str:
    p = view.progress
    if not p:
        return view.job.state
    if p.get("phase") == "done":
        return "done"
    eta = p.get("stage_eta_s")
    eta_text = f", ETA {eta / 60:.1f} min" if eta else ""
    return (f"stage {p['stage_index'] + 1}/{len(p['stages'])} {p['stage']} ({p['phase']}): step {p['step']}/"
            f"{p['steps']}, {100 * p['job_share']:.0f} % of the job, {p['images_per_s']:.1f} images/s{eta_text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.jobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-dir", default=str(DEFAULT_ROOT), help="the job store (default: runs/jobs)")
    parser.add_argument("--presets-dir", default=str(PRESETS), help="folder of preset YAML files (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads per training job (default: {default_threads()}, half the cores)")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="queue a job (it starts when its device is free)")
    s.add_argument("kind", choices=["lora", "controlnet"])
    s.add_argument("--name", default="")
    s.add_argument("--preset", default="quick", help=f"a preset of --presets-dir: {', '.join(preset_names())}")
    s.add_argument("--teacher", default="", help="the multi-step teacher pipeline folder (default: the preset's)")
    s.add_argument("--student", default="", help="the one-step model the result is for (default: the preset's)")
    s.add_argument("--style-lora", default="", help="lora: an existing LoRA of the multi-step base (file or folder)")
    s.add_argument("--images", default="", help="lora: a folder of >= 8 style images; controlnet: its images "
                                                 "(default: the preset's data, the miniature world)")
    s.add_argument("--trigger", default="", help="lora from images: the trigger word of the caption template")
    s.add_argument("--caption-template", default="", help="captions of images without a NAME.txt, e.g. '{trigger}'")
    s.add_argument("--caption-with", default="", choices=["", "template", "classifier"])
    s.add_argument("--control-type", default="canny", choices=CONTROL_TYPES)
    s.add_argument("--teacher-controlnet", default="", help="controlnet: the teacher's ControlNet folder, or 'train' "
                                                            "(default: the preset's for this control type)")
    s.add_argument("--device", default="auto", choices=DEVICES)
    s.add_argument("--num-processes", type=int, default=1, help="processes of accelerate launch (GPUs, or CPU gloo)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage option, e.g. lora_ssd.max_steps=300 (repeatable)")
    s.add_argument("--wait", action="store_true", help="stay until the job ends, printing its progress")

    sub.add_parser("list", help="every job and its state")
    for name, text in (("show", "one job: its progress, stages and log tail"),
                       ("cancel", "stop a job (a checkpoint first) or drop it from the queue"),
                       ("resume", "continue an interrupted, cancelled or failed job from its checkpoints")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", type=int)
        if name != "show":
            p.add_argument("--wait", action="store_true")
        else:
            p.add_argument("--json", action="store_true", help="the whole job view as JSON")
    sub.add_parser("watch", help="run the queue in the foreground until no job is queued or running")
    return parser


def _follow(manager: JobManager, job_id: int) -> int:
    last = ""
    while True:
        manager.tick()
        view = manager.view(job_id)
        line = _progress(view) if view.job.state == "running" else view.job.state
        if line != last:
            print(f"[{job_id}] {line}", flush=True)
            last = line
        if view.job.state in ENDED:
            print(_line(view.job))
            if view.artefact:
                print(f"artefact: {view.artefact}")
            return 0 if view.job.state == "finished" else 1
        time.sleep(2)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    manager = JobManager(args.jobs_dir, threads=args.threads, presets=args.presets_dir)
    try:
        if args.command == "submit":
            request = JobRequest(args.kind, args.name, args.preset, args.teacher, args.student, args.style_lora,
                                 args.images, args.trigger, args.caption_template, args.caption_with, args.control_type,
                                 args.teacher_controlnet, args.device, args.num_processes, _overrides(args.overrides))
            job = manager.submit(request)
            print(f"job {job.id} {job.state}: {manager.store.folder(job)}")
            return _follow(manager, job.id) if args.wait else 0
        if args.command == "list":
            manager.tick()
            jobs = manager.jobs()
            print("  id  state       kind       dev   created      name" if jobs else "no jobs in " + args.jobs_dir)
            for job in jobs:
                print(_line(job))
            return 0
        if args.command == "show":
            manager.tick()
            view = manager.view(args.job)
            if args.json:
                print(json.dumps({"job": view.job.to_dict(), "progress": view.progress, "plan": view.plan,
                                  "metrics": view.metrics[-20:], "sample": str(view.sample or ""),
                                  "artefact": str(view.artefact or "")}, indent=2))
                return 0
            print(_line(view.job))
            print(f"folder: {manager.store.folder(view.job)}")
            print(f"stages: {' -> '.join(s['name'] for s in view.plan.get('stages', []))}")
            print(f"progress: {_progress(view)}")
            if view.sample:
                print(f"latest samples: {view.sample}")
            if view.artefact:
                print(f"artefact: {view.artefact}")
            print("--- log tail ---\n" + view.log_tail)
            return 0
        if args.command == "cancel":
            job = manager.cancel(args.job)
            print(f"job {job.id}: {job.state}" + (" (stopping after its next step)" if job.state == "running" else ""))
            return _follow(manager, job.id) if args.wait else 0
        if args.command == "resume":
            job = manager.resume(args.job)
            print(f"job {job.id}: {job.state}")
            return _follow(manager, job.id) if args.wait else 0
        while True:  # watch
            manager.tick()
            active = [j for j in manager.jobs() if j.state in ("queued", "running")]
            if not active:
                print("queue empty")
                return 0
            for job in active:
                print(f"[{job.id}] {_progress(manager.view(job.id)) if job.state == 'running' else 'queued'}", flush=True)
            time.sleep(5)
    except (JobError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
