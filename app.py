"""SDXS Studio in the browser: text-to-image as you type, a live webcam loop and a sketch pad.

    python app.py                                    # bundled miniature model (or a random tiny one)
    python app.py --model sdxs-512-dreamshaper --controlnet sdxs-512-dreamshaper-sketch --device cuda
    python app.py --host 0.0.0.0 --ssl-certfile cert.pem --ssl-keyfile key.pem   # webcams on other machines

This file is wiring only: models live in ``sdxs_core.catalogue``, switching and generation in ``sdxs_core.hub``, the
live loop in ``sdxs_core.stream`` (its WebSocket transport and browser client in ``sdxs_core.live_socket``)
and training jobs in ``trainers.jobs`` (the Train tab starts them as background processes).
Browsers need HTTPS (or localhost) to open a webcam.
"""

import argparse
import functools
import time
from dataclasses import asdict
from pathlib import Path

import gradio as gr
import torch
import yaml

from sdxs_core import access, limits, live_socket
from sdxs_core.control import EXTRACTORS, sketch_to_control
from sdxs_core.devices import serving_threads
from sdxs_core.errors import RANGES, InvalidInputError, Range, SDXSError
from sdxs_core.gpu import MODES
from sdxs_core.stream import STAGES, FrameResult, LiveParams, LiveSession, LiveStats, frame_notices
from sdxs_core.hub import ModelHub, TextRequest, text_to_image
from trainers.jobs.inputs import data_folders, resolve_data_folder, save_image_uploads, save_lora_upload
from trainers.jobs.manager import JobManager, JobView
from trainers.jobs.plan import CONTROL_TYPES, TRAIN_TEACHER, JobError, JobRequest, teacher_unet

DEFAULT_PROMPT = "a red heart above a blue star on a white background"
LIVE_STREAMS = 2  # webcams served at once; a third page retries until a slot frees
SKETCH_PADS = 8  # sketch pads served at once (a pad sends only while its pen moves)
LIVE_TURN_S = 300  # a stream keeps its slot this long at least, longer while nobody else waits
ENGINE_SLOTS = 2  # concurrent request/response generations (text, sketch, API), apart from streams
IMAGE_HEIGHT = 400  # px; small models' frames (64x64) are scaled up to this
CSS = """
#live-readout, #t2i-info { font-variant-numeric: tabular-nums; }
.sdxs-live-row { display: flex; gap: 0.75em; }
.sdxs-live-row figure { flex: 1; margin: 0; min-width: 0; }
.sdxs-live-row figcaption { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.sdxs-live-row video, .sdxs-live-row img { width: 100%; aspect-ratio: 1; object-fit: contain;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); display: block; }
.sdxs-live-row video { object-fit: cover; }
.sdxs-live-row video.mirrored { transform: scaleX(-1); }
#sketch-canvas { width: 100%; aspect-ratio: 1; display: block; touch-action: none; cursor: crosshair;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg); background: #fff; }
#sketch-gen img { width: 100%; aspect-ratio: 1; object-fit: contain; display: block; image-rendering: auto;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); }
#sketch-clear { border: 1px solid var(--border-color-primary); border-radius: var(--button-large-radius);
  padding: var(--button-large-padding); background: var(--button-secondary-background-fill); cursor: pointer; }
#sketch-readout { min-height: 1.5em; font-variant-numeric: tabular-nums; }
.sdxs-live-bar { display: flex; gap: 1em; align-items: center; margin: 0.6em 0; }
#live-start { background: var(--button-primary-background-fill); color: var(--button-primary-text-color);
  border: none; border-radius: var(--button-large-radius); padding: var(--button-large-padding);
  font-weight: var(--button-large-text-weight); font-size: var(--button-large-text-size); min-width: 12em;
  cursor: pointer; }
#live-start:hover { background: var(--button-primary-background-fill-hover); }
#live-save, #live-record { border: 1px solid var(--border-color-primary); border-radius: var(--button-large-radius);
  padding: var(--button-large-padding); background: var(--button-secondary-background-fill); cursor: pointer; }
#live-save:disabled, #live-record:disabled { opacity: 0.5; cursor: default; }
#live-mirror { appearance: auto; accent-color: var(--color-accent); width: 1.1em; height: 1.1em; margin: 0 0.3em 0 0; }
#live-readout { min-height: 3em; }
#banner { border-left: 4px solid var(--color-accent); padding-left: 0.75em; }
#train-sample img { width: 100%; image-rendering: pixelated; }
#train-progress progress { width: 100%; height: 1.2em; accent-color: var(--color-accent); }
"""
MAX_PLOT_POINTS = 500  # per loss curve


# The Live tab's own markup: sdxs_core/live_client.js streams the webcam over a WebSocket
# (sdxs_core/live_socket.py) and fills these elements; the settings are the Gradio controls below it.
def _placeholder(text: str) -> str:
    """An image source that says what will appear there (an empty <img> shows a broken-image icon)."""
    from urllib.parse import quote

    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 200"><rect width="200" height="200" '
           'fill="#8881"/><text x="100" y="104" font-family="sans-serif" font-size="12" fill="#888" '
           f'text-anchor="middle">{text}</text></svg>')
    return "data:image/svg+xml," + quote(svg)


LIVE_HTML = f"""<div class="sdxs-live">
  <div class="sdxs-live-row">
    <figure><figcaption>Webcam</figcaption><video id="live-webcam" autoplay muted playsinline
      poster="{_placeholder('Press Start webcam')}"></video></figure>
    <figure id="live-out"><figcaption>Generated</figcaption><img alt="generated frame"
      src="{_placeholder('Generated frames appear here')}"></figure>
    <figure id="live-control"><figcaption>Control map</figcaption><img alt="control map"
      src="{_placeholder('The control map appears here')}"></figure>
  </div>
  <div class="sdxs-live-bar">
    <button id="live-start">Start webcam</button>
    <button id="live-save" disabled title="Download the generated frame on screen">Save frame</button>
    <button id="live-record" disabled title="Record the generated frames for 5 s (WebM)">Record 5 s</button>
    <label><input type="checkbox" id="live-mirror" checked> Mirror</label>
  </div>
  <div id="live-readout">Press Start webcam: FPS and latency appear here.</div>
</div>"""
SKETCH_PLACEHOLDER = _placeholder("Draw on the left: the image appears here")
SKETCH_HTML = f"""<div class="sdxs-sketch">
  <div class="sdxs-live-row">
    <figure><figcaption>Draw (black on white)</figcaption><canvas id="sketch-canvas" width="512"
      height="512"></canvas></figure>
    <figure id="sketch-gen"><figcaption>Generated</figcaption><img alt="generated image"
      src="{SKETCH_PLACEHOLDER}" data-placeholder="{SKETCH_PLACEHOLDER}"></figure>
  </div>
  <div class="sdxs-live-bar"><button id="sketch-clear">Clear</button><span id="sketch-busy"></span></div>
  <div id="sketch-readout">Draw on the pad: every stroke regenerates.</div>
</div>"""


def live_gate() -> live_socket.LiveGate:
    return live_socket.LiveGate(slots=LIVE_STREAMS, turn_s=LIVE_TURN_S)


def refuse(e: Exception) -> gr.Error:
    """A bad input as a toast and an API error that say which field; not logged as a crash."""
    return gr.Error(str(e), print_exception=False)


def checked(component):
    """Gradio's own checks answer "Value 0 is less than minimum value 1", or a generic error for
    "abc"; this checks a Number or Slider through ``sdxs_core.errors.RANGES`` (narrowed to the
    control's bounds), so the toast and the API error name the field: "Images: at least 1"."""
    known = RANGES.get(component.label)
    low = component.minimum if component.minimum is not None else (known.low if known else -float("inf"))
    high = component.maximum if component.maximum is not None else (known.high if known else float("inf"))
    rule = Range(component.label, low, high, component.precision == 0 or bool(known and known.integer))
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        try:
            return gradio_preprocess(rule.check(payload, text=True))
        except InvalidInputError as e:
            raise refuse(e) from None

    component.preprocess = preprocess
    return component


def checked_image(component):
    """An image input that names itself when a client sends a file that is not an image."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        try:
            return gradio_preprocess(payload)
        except Exception as e:  # PIL's UnidentifiedImageError, DecompressionBombError, OSError, ...
            raise refuse(f"{component.label or 'Image'}: not an image the server can read ({type(e).__name__})") from None

    component.preprocess = preprocess
    return component


def launch_options(hub: ModelHub, train: bool = False, gate: live_socket.LiveGate | None = None) -> dict:
    """``launch`` arguments beyond host and port: theme and CSS (Gradio 6 takes them here; system
    fonts, so nothing is fetched), the upload limit (larger with the Train tab, whose LoRA files and
    datasets have their own limits) and the live loop's WebSocket route. Also makes image decoding
    refuse images over ``limits.MAX_IMAGE_SIDE`` squared pixels, as Gradio decodes uploads first."""
    limits.guard_decoders()
    theme = gr.themes.Soft(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])
    gate = gate or live_gate()
    sketch_gate = live_socket.LiveGate(slots=SKETCH_PADS, turn_s=LIVE_TURN_S)
    max_mb = limits.TRAIN_UPLOAD_MB if train else limits.MAX_UPLOAD_MB
    return {"theme": theme, "css": CSS, "max_file_size": f"{max_mb}mb",
            "app_kwargs": {"routes": live_socket.live_routes(hub, gate)
                           + live_socket.live_routes(hub, sketch_gate, live_socket.SKETCH_PATH,
                                                      static_threshold=0.0)}}


# ---- text shown to the user ---------------------------------------------------------------------
def timing_line(t, n: int) -> str:
    return (f"**{n} image{'s' if n > 1 else ''} in {t.total_ms:.0f} ms** ({t.total_ms / n:.0f} ms/image) · "
            f"text {t.text_ms:.0f} · control {t.control_ms:.0f} · U-Net {t.unet_ms:.0f} · "
            f"decode {t.decode_ms:.0f} ms")


def live_readout(result: FrameResult, stats: LiveStats, params: LiveParams, trained_on: str = "") -> str:
    """The Live tab's status line; ``trained_on`` is the attached ControlNet's control type, so a
    map it was not trained on (depth into an edges ControlNet) is pointed out, not silently drawn."""
    s = result.stages_ms
    stages = " · ".join(f"{name.removesuffix('_ms')} {s[name]:.0f}" for name in STAGES[:-1])
    source = "static frame, last output reused" if result.reused else f"server {s['total_ms']:.0f} ms: {stages} ms"
    text = (f"**{stats.fps:.1f} fps** · latency {result.latency_ms:.0f} ms (avg {stats.latency_ms:.0f}) · "
            f"control **{params.control_type}** · {source}\n\n"
            f"{stats.generated} generated · {stats.reused} static reused · {stats.superseded} superseded")
    notices = frame_notices(result, trained_on, params.control_type)
    return text + "".join(f"\n\n⚠️ {n}" for n in notices)


def catalogue(hub: ModelHub) -> str:
    rows = ["| kind | entry | made for | fits the loaded base |", "|---|---|---|---|"]
    for kind in ("controlnet", "lora"):
        for e in hub.entries(kind):
            rows.append(f"| {kind} | {e.label} | {e.base or '?'} | {'yes' if hub.fits(e) else 'no'} |")
    if len(rows) == 2:
        rows.append("| | no ControlNets or LoRAs found under outputs/ or assets/ | | |")
    return "\n".join(rows)


def job_choices(jobs: "TrainJobs") -> list[tuple[str, int]]:
    return [(f"#{j.id} {j.name} · {j.state}", j.id) for j in reversed(jobs.manager.jobs())]


def job_table(jobs: "TrainJobs") -> list[list]:
    rows = []
    for j in reversed(jobs.manager.jobs()):
        share = ""
        if j.state == "running":
            p = jobs.manager.progress(j) or {}
            share = f"{100 * p.get('job_share', 0):.0f} %"
        rows.append([j.id, j.name, j.kind, j.state, share, time.strftime("%m-%d %H:%M", time.localtime(j.created))])
    return rows


def job_status(view: JobView) -> str:
    """The job page's header: state, stage, step / total, images/s, ETA, and why it ended."""
    j, p = view.job, view.progress or {}
    stages = [s["name"] for s in view.plan.get("stages", [])]
    lines = [f"**#{j.id} {j.name}** · {j.kind} · **{j.state}** · {j.device} · stages: {' → '.join(stages)}"]
    if j.state == "running" and p:
        if p.get("phase") == "setup":
            lines.append(f"Stage {p['stage_index'] + 1}/{len(stages)} **{p['stage']}**: preparing (models, data, "
                         "teacher pairs)…")
        elif p.get("phase") == "training":
            eta = p.get("stage_eta_s")
            lines.append(f"Stage {p['stage_index'] + 1}/{len(stages)} **{p['stage']}**: step {p['step']} / {p['steps']}"
                         f" · {p['images_per_s']:.1f} images/s" + (f" · ETA {eta / 60:.1f} min" if eta else ""))
        else:
            lines.append(f"{p.get('phase', '')}…")
    elif j.state == "queued":
        lines.append("Waiting for the device: one training job runs at a time.")
    if j.reason:
        lines.append(f"⚠️ {j.reason}")
    if view.artefact:
        lines.append(f"Result: `jobs/{j.folder}` — pick it in the Models tab or press **Use now**.")
    return "\n\n".join(lines)


def progress_html(view: JobView) -> str:
    share = 1.0 if view.job.state == "finished" else (view.progress or {}).get("job_share", 0.0)
    return f'<progress max="1" value="{share:.3f}"></progress> {100 * share:.0f} % of the job'


def loss_frame(view: JobView):
    """Loss curves as long-form rows (step, loss, series) for a ``gr.LinePlot``."""
    import pandas as pd

    every = max(1, len(view.metrics) // MAX_PLOT_POINTS)  # a long run's curve, thinned: the page polls it
    rows = [{"step": m["step"], "loss": v, "series": f"{m['stage']} {k.removesuffix('/loss')}"}
            for m in view.metrics[::every] for k, v in m.items() if k.endswith("/loss") and isinstance(v, (int, float))]
    return pd.DataFrame(rows or [], columns=["step", "loss", "series"]).astype({"step": float, "loss": float})


def parse_overrides(text: str) -> dict:
    """The Advanced box: YAML ``stage: {option: value}``."""
    if not (text or "").strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobError(f"Advanced options: not YAML ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise JobError("Advanced options: write 'stage: {option: value}', e.g. 'lora_ssd: {max_steps: 300}'")
    return data


class TrainJobs:
    """What the Train tab needs besides the manager: where uploads go, the data root it may offer,
    and the teacher-side models a form may pick (by key, never by path)."""

    def __init__(self, manager: JobManager, hub: ModelHub, data_root: Path | None):
        self.manager, self.hub, self.data_root = manager, hub, data_root
        self.uploads = manager.root / "uploads"
        self._teacher_unets: dict = {}

    def folders(self) -> list[str]:
        return data_folders(self.data_root)

    def teacher_adapters(self, kind: str, preset: str) -> list[tuple[str, str]]:
        """LoRAs / ControlNets that fit the preset's multi-step teacher (what a job distils from)."""
        unet = self._teacher_unets.get(preset)
        if unet is None:
            unet = self._teacher_unets[preset] = teacher_unet(preset, self.manager.presets)
        return [(e.label, e.key) for e in self.hub.entries(kind) if unet is not None and self.hub.fits(e, unet)]

    def source_of(self, kind: str, key: str) -> str:
        entry = self.hub.lookup(kind, key)
        if entry is None:
            raise JobError(f"{key!r} is not one of the {kind}s this server offers")
        return entry.source

    def images(self, uploads, folder: str) -> str:
        if uploads:
            return str(save_image_uploads(uploads, self.uploads))
        if folder:
            return str(resolve_data_folder(self.data_root, folder))
        return ""


# ---- the Train tab --------------------------------------------------------------------------------
TRAIN_INTRO = ("Distil a style LoRA or a ControlNet into the one-step model, in the background: keep using the "
               "other tabs while it trains. One job runs at a time; the rest wait in the queue. A finished "
               "result appears in the Models tab at once.")
LORA_FROM = ("a LoRA of the multi-step base", "style images")
CN_DATA = ("the miniature world", "uploaded images", "a folder under the data root")
TEACHER_CN_DEFAULT = "the preset's (or train one first)"


def build_train_tab(jobs: TrainJobs, model_view, model_outputs, deny) -> None:
    """Two job forms, the job list and the selected job's page, refreshed every 2 s. ``deny(request,
    action)``: the refusal for a request that may not change shared state (see build_demo)."""
    presets = jobs.manager.preset_names()
    default_preset = "quick" if "quick" in presets else presets[0]
    gr.Markdown(TRAIN_INTRO)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Tab("Style LoRA"):
                lora_from = gr.Radio(list(LORA_FROM), value=LORA_FROM[0], label="Start from")
                teacher_loras = jobs.teacher_adapters("lora", default_preset)
                lora_pick = gr.Dropdown(teacher_loras, value=teacher_loras[0][1] if teacher_loras else None,
                                        label="LoRA of the multi-step base",
                                        info="diffusers, PEFT or kohya; the teacher's pastel LoRA ships as an example",
                                        elem_id="train-lora-pick")
                lora_file = gr.File(label="…or upload one (.safetensors)", file_types=[".safetensors"], type="filepath")
                style_files = gr.File(label="Style images (at least 8; a NAME.txt beside an image is its caption)",
                                      file_count="multiple", file_types=["image", ".txt"], type="filepath",
                                      visible=False, elem_id="train-style-files")
                style_folder = gr.Dropdown(jobs.folders(), value=None, label="…or a folder under the data root",
                                           visible=False)
                with gr.Row(visible=False) as caption_row:
                    trigger = gr.Textbox(label="Trigger word", placeholder="e.g. sks")
                    caption_with = gr.Radio(["preset", "template", "classifier"], value="preset",
                                            label="Captions for images without NAME.txt",
                                            info="classifier: the miniature world's reads each scene")
                    caption_template = gr.Textbox(label="Caption template", placeholder="{trigger}, or {caption}, {trigger}")
                lora_name = gr.Textbox(label="Job name", placeholder="my-style", elem_id="train-lora-name")
                lora_preset = gr.Dropdown(presets, value=default_preset, label="Preset",
                                          info="quick: minutes on a CPU · full: the shipped recipes · sdxs-512-*: a GPU")
                with gr.Accordion("Advanced", open=False):
                    lora_overrides = gr.Code("", language="yaml", label="Stage options (YAML: stage: {option: value})",
                                             elem_id="train-lora-overrides")
                    lora_procs = gr.Number(1, precision=0, minimum=1, label="Processes (accelerate launch)")
                lora_start = gr.Button("Start", variant="primary", elem_id="train-lora-start")
            with gr.Tab("ControlNet"):
                cn_type = gr.Radio(list(CONTROL_TYPES), value="canny", label="Control type",
                                   info="the same extractors as the Live tab")
                cn_data = gr.Radio(list(CN_DATA), value=CN_DATA[0], label="Images")
                cn_files = gr.File(label="Images (maps are extracted automatically)", file_count="multiple",
                                   file_types=["image", ".txt"], type="filepath", visible=False)
                cn_folder = gr.Dropdown(jobs.folders(), value=None, label="Folder under the data root", visible=False)
                cn_teacher = gr.Dropdown([TEACHER_CN_DEFAULT, "train one first",
                                          *jobs.teacher_adapters("controlnet", default_preset)],
                                         value=TEACHER_CN_DEFAULT, label="Teacher ControlNet")
                cn_name = gr.Textbox(label="Job name", placeholder="my-canny")
                cn_preset = gr.Dropdown(presets, value=default_preset, label="Preset")
                with gr.Accordion("Advanced", open=False):
                    cn_overrides = gr.Code("", language="yaml", label="Stage options (YAML: stage: {option: value})")
                    cn_procs = gr.Number(1, precision=0, minimum=1, label="Processes (accelerate launch)")
                cn_start = gr.Button("Start", variant="primary")
            submit_info = gr.Markdown(elem_id="train-submit-info")
        with gr.Column(scale=3):
            job_list = gr.Dataframe(job_table(jobs), headers=["id", "name", "kind", "state", "done", "created"],
                                    interactive=False, label="Jobs", max_height=220, elem_id="train-jobs")
            job_pick = gr.Dropdown(job_choices(jobs), label="Job", elem_id="train-job-pick")
            status = gr.Markdown(elem_id="train-status")
            bar = gr.HTML(elem_id="train-progress")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id="train-cancel")
                resume = gr.Button("Resume", size="sm", elem_id="train-resume")
                use_now = gr.Button("Use now", variant="primary", size="sm", elem_id="train-use-now")
                download = gr.DownloadButton("Download safetensors", size="sm", visible=False, elem_id="train-download")
            with gr.Row():
                losses = gr.LinePlot(x="step", y="loss", color="series", label="Losses", height=260, elem_id="train-losses")
                sample = gr.Image(label="Validation samples (same prompts and seeds every time)", format="png",
                                  interactive=False, height=260, elem_id="train-sample")
            log = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True, elem_id="train-log")
    timer = gr.Timer(2.0)
    seen = gr.State(())  # the finished artefacts this page has offered in its pickers

    def lora_visibility(source):
        images = source == LORA_FROM[1]
        return (gr.update(visible=not images), gr.update(visible=not images), gr.update(visible=images),
                gr.update(visible=images), gr.update(visible=images))

    def cn_visibility(data):
        return gr.update(visible=data == CN_DATA[1]), gr.update(visible=data == CN_DATA[2])

    def submit(request: JobRequest):
        try:
            job = jobs.manager.submit(request)
        except JobError as e:
            gr.Warning(str(e).split("\n")[0])
            return "⚠️ Not started:\n\n" + "\n".join(f"- {line}" for line in str(e).splitlines()), None
        return f"Job **#{job.id} {job.name}** {job.state}.", job.id

    def submit_lora(source, pick, upload, files, folder, trig, captions, template, name, preset, overrides, procs,
                    request: gr.Request = None):
        refused = deny(request, "start a training job")
        if refused:
            gr.Warning(refused)
            return f"⚠️ Not started: {refused}", None
        try:
            if source == LORA_FROM[0]:
                style_lora = str(save_lora_upload(upload, jobs.uploads)) if upload else \
                    jobs.source_of("lora", pick) if pick else ""
                if not style_lora:
                    raise JobError("pick or upload a LoRA of the multi-step base")
                images = ""
            else:
                style_lora, images = "", jobs.images(files, folder)
                if not images:
                    raise JobError("images: upload at least 8 style images or pick a folder")
            request = JobRequest("lora", name or "", preset, style_lora=style_lora, images=images, trigger=trig or "",
                                 caption_template=template or "", caption_with="" if captions == "preset" else captions,
                                 num_processes=int(procs or 1), overrides=parse_overrides(overrides))
        except JobError as e:
            gr.Warning(str(e))
            return f"⚠️ Not started: {e}", None
        return submit(request)

    def submit_controlnet(control, data, files, folder, teacher, name, preset, overrides, procs,
                          request: gr.Request = None):
        refused = deny(request, "start a training job")
        if refused:
            gr.Warning(refused)
            return f"⚠️ Not started: {refused}", None
        try:
            images = "" if data == CN_DATA[0] else jobs.images(files if data == CN_DATA[1] else None,
                                                               folder if data == CN_DATA[2] else "")
            if data != CN_DATA[0] and not images:
                raise JobError("images: upload images or pick a folder under the data root")
            teacher_cn = "" if teacher == TEACHER_CN_DEFAULT else TRAIN_TEACHER if teacher == "train one first" \
                else jobs.source_of("controlnet", teacher)
            request = JobRequest("controlnet", name or "", preset, images=images, control_type=control,
                                 teacher_controlnet=teacher_cn, num_processes=int(procs or 1),
                                 overrides=parse_overrides(overrides))
        except JobError as e:
            gr.Warning(str(e))
            return f"⚠️ Not started: {e}", None
        return submit(request)

    def page(job_id, seen_before):
        """The job list and the selected job's page; the Models tab's pickers when a result is new."""
        artefacts = tuple(sorted(jobs.manager.artefacts()))
        models = [gr.skip()] * len(model_outputs)
        if artefacts != tuple(seen_before):
            jobs.hub.rescan()
            models = list(model_view())
        table = job_table(jobs)
        if job_id is None:
            return (table, gr.skip(), "Pick a job, or start one on the left.", "", None, None, "",
                    gr.update(visible=False), artefacts, *models)
        try:
            view = jobs.manager.view(int(job_id))
        except (KeyError, ValueError):
            return (table, gr.update(choices=job_choices(jobs), value=None), "That job is gone.", "", None, None, "",
                    gr.update(visible=False), artefacts, *models)
        file = view.artefact_file
        return (table, gr.update(choices=job_choices(jobs)), job_status(view), progress_html(view), loss_frame(view),
                str(view.sample) if view.sample else None, view.log_tail,
                gr.update(visible=file is not None, value=str(file) if file else None), artefacts, *models)

    def act(action, job_id, request):
        refused = deny(request, "cancel or resume a training job")
        if refused:
            gr.Warning(refused)
            return f"⚠️ {refused}"
        if job_id is None:
            gr.Warning("Pick a job first.")
            return "Pick a job first."
        try:
            job = action(int(job_id))
        except (JobError, KeyError) as e:
            gr.Warning(str(e.args[0]))
            return f"⚠️ {e.args[0]}"
        return f"Job **#{job.id}** {job.state}" + (": stopping after its next step (a checkpoint first)."
                                                   if action == jobs.manager.cancel and job.state == "running" else ".")

    def cancel_job(job_id, request: gr.Request = None):
        return act(jobs.manager.cancel, job_id, request)

    def resume_job(job_id, request: gr.Request = None):
        return act(jobs.manager.resume, job_id, request)

    def apply(job_id, request: gr.Request = None):
        """Use now: the job's result becomes the app's LoRA or ControlNet (Text to image and Live)."""
        refused = deny(request, "switch the app's LoRA or ControlNet")
        if refused:
            return model_view(refused)
        if job_id is None:
            return model_view("Pick a finished job first.")
        view = jobs.manager.view(int(job_id))
        if view.artefact is None:
            return model_view(f"Job #{view.job.id} is {view.job.state}: only a finished job has a result to use.")
        jobs.hub.rescan()
        kind = "lora" if view.job.kind == "lora" else "controlnet"
        key = next((e.key for e in jobs.hub.entries(kind) if Path(e.source).is_relative_to(view.artefact)), None)
        if key is None:
            return model_view(f"Job #{view.job.id}'s result is not a {kind} the app can load.")
        return model_view(jobs.hub.set_lora(key) if kind == "lora" else jobs.hub.set_controlnet(key))

    lora_from.change(lora_visibility, lora_from, [lora_pick, lora_file, style_files, style_folder, caption_row],
                     api_visibility="private")
    lora_preset.change(lambda p: gr.update(choices=jobs.teacher_adapters("lora", p), value=None), lora_preset,
                       lora_pick, api_visibility="private")  # another preset may mean another teacher
    cn_preset.change(lambda p: gr.update(choices=[TEACHER_CN_DEFAULT, "train one first",
                                                  *jobs.teacher_adapters("controlnet", p)], value=TEACHER_CN_DEFAULT),
                     cn_preset, cn_teacher, api_visibility="private")
    cn_data.change(cn_visibility, cn_data, [cn_files, cn_folder], api_visibility="private")
    new_job = gr.Number(visible=False, precision=0)  # the API's answer: the job's id (None when refused)

    def show_job(job_id):
        return gr.update(choices=job_choices(jobs), value=job_id) if job_id is not None else gr.skip()

    lora_start.click(submit_lora, [lora_from, lora_pick, lora_file, style_files, style_folder, trigger, caption_with,
                                   caption_template, lora_name, lora_preset, lora_overrides, lora_procs],
                     [submit_info, new_job], api_name="train_lora").then(show_job, new_job, job_pick,
                                                                         api_visibility="private")
    cn_start.click(submit_controlnet, [cn_type, cn_data, cn_files, cn_folder, cn_teacher, cn_name, cn_preset,
                                       cn_overrides, cn_procs], [submit_info, new_job],
                   api_name="train_controlnet").then(show_job, new_job, job_pick, api_visibility="private")
    page_outputs = [job_list, job_pick, status, bar, losses, sample, log, download, seen, *model_outputs]
    gr.on([timer.tick, job_pick.change], page, [job_pick, seen], page_outputs, api_visibility="private",
          show_progress="hidden", trigger_mode="always_last")
    # the buttons act on the picked job; API clients name it by id (hidden twins of the same handlers)
    jobs_api, job_id_api = gr.JSON(visible=False), gr.Number(visible=False, precision=0)
    for button, handler, outputs, name in (
            (cancel, cancel_job, submit_info, "train_cancel"),
            (resume, resume_job, submit_info, "train_resume"),
            (use_now, apply, model_outputs, "train_use")):
        button.click(handler, job_pick, outputs, api_visibility="private")
        gr.Button(visible=False).click(handler, job_id_api, outputs, api_name=name)
    gr.Button(visible=False).click(lambda: [j.to_dict() for j in jobs.manager.jobs()], None, jobs_api,
                                   api_name="train_jobs")
    gr.Button(visible=False).click(lambda j: job_api_view(jobs, j), job_id_api, jobs_api, api_name="train_job")


def job_api_view(jobs: TrainJobs, job_id) -> dict:
    """``/train_job`` for API clients: the job row, its progress, the last metrics and its result's key."""
    try:
        view = jobs.manager.view(int(job_id))
    except (KeyError, TypeError, ValueError):
        raise gr.Error(f"job: no job {job_id!r}") from None
    return {"job": view.job.to_dict(), "progress": view.progress, "metrics": view.metrics[-20:],
            "stages": [s["name"] for s in view.plan.get("stages", [])],
            "samples": len(view.samples), "result": f"jobs/{view.job.folder}" if view.artefact else None}


# ---- the page -------------------------------------------------------------------------------------
def build_demo(hub: ModelHub, jobs: TrainJobs | None = None, admins: frozenset[str] | None = None) -> gr.Blocks:
    """The Blocks app over one ``ModelHub`` (and the training jobs, unless ``jobs`` is None: no
    Train tab); every handler delegates to sdxs_core or trainers.jobs. ``admins``: the logged-in
    accounts that may change shared state (None: every account; see sdxs_core.access)."""
    deny = functools.partial(access.refusal, admins=admins)
    engine_queue = dict(concurrency_id="engine", concurrency_limit=ENGINE_SLOTS)

    def run_live(session: LiveSession, frame, params: LiveParams) -> FrameResult | None:
        with hub.using() as engine:
            return session.process(engine, frame, params)

    def generate(prompt, style, seed, randomize, num_images):
        try:
            out = text_to_image(hub, TextRequest(prompt or "", style, int(seed or 0), bool(randomize), int(num_images)))
        except InvalidInputError as e:
            raise refuse(e) from None
        except (SDXSError, ValueError) as e:
            gr.Warning(str(e))
            return gr.skip(), f"⚠️ {e}"
        for warning in out.warnings:
            gr.Warning(warning)
        per_image = out.timings.total_ms / len(out.images)
        gallery = [(im, f"seed {s} · {per_image:.0f} ms") for im, s in zip(out.images, out.seeds)]
        return gallery, "".join(f"⚠️ {w}\n\n" for w in out.warnings) + timing_line(out.timings, len(out.images))

    def live(frame, prompt, control_type, strength, seed, session: LiveSession):
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            limits.check_image(frame, "Frame")
            params = LiveParams(prompt or "", control_type, float(strength), int(seed or 0))
            result = run_live(session, frame, params)
        except InvalidInputError as e:
            raise refuse(e) from None
        except (SDXSError, ValueError) as e:
            return gr.skip(), gr.skip(), f"⚠️ {e}", gr.skip()
        if result is None:  # superseded by a newer frame of this session
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        stats = session.stats()
        return (result.image, result.control,
                live_readout(result, stats, params, hub.controlnet_control),
                {"stages_ms": result.stages_ms, "latency_ms": result.latency_ms, "frame_reused": result.reused,
                 **asdict(stats)})

    def sketch(canvas, prompt, strength, seed, session: LiveSession):
        try:
            limits.check_image((canvas or {}).get("composite") if isinstance(canvas, dict) else canvas, "Sketch")
        except limits.ImageLimitError as e:
            return gr.skip(), f"⚠️ {e}"
        control = sketch_to_control(canvas)
        if control is None:
            return gr.skip(), "Draw on the pad: every stroke regenerates."
        try:
            params = LiveParams(prompt or "", "none", float(strength), int(seed or 0))
            result = run_live(session, control, params)
        except InvalidInputError as e:
            raise refuse(e) from None
        except (SDXSError, ValueError) as e:
            return gr.skip(), f"⚠️ {e}"
        if result is None:
            return gr.skip(), gr.skip()
        s = result.stages_ms
        return result.image, (f"**{s['total_ms']:.0f} ms** · control {s['control_ms']:.0f} · "
                              f"U-Net {s['unet_ms']:.0f} · decode {s['decode_ms']:.0f} ms")

    def model_view(notice: str = ""):
        """Everything that depends on the loaded model, for this session's page."""
        return (hub.status() + (f"\n\n{notice}" if notice else ""),
                gr.update(choices=hub.choices("pipeline"), value=hub.model_key),
                gr.update(choices=[("none", "none"), *hub.choices("controlnet")], value=hub.controlnet_key or "none"),
                gr.update(choices=[("none", "none"), *hub.choices("lora")], value=hub.lora_key or "none"),
                catalogue(hub))

    # switching the engine changes the app for every user: only the operator may (sdxs_core.access)
    def load_model(key, request: gr.Request = None):
        return model_view(deny(request, "switch the model") or hub.load_model(key))

    def set_controlnet(key, request: gr.Request = None):
        return model_view(deny(request, "switch the ControlNet") or hub.set_controlnet(key))

    def set_lora(key, scale, request: gr.Request = None):
        return model_view(deny(request, "switch the LoRA") or hub.set_lora(key, scale))

    def set_lora_scale(scale, request: gr.Request = None):
        refused = deny(request, "change the LoRA scale")
        if refused:
            gr.Warning(refused)
        else:
            hub.set_lora_scale(scale)

    def rescan(request: gr.Request = None):
        refused = deny(request, "rescan the model folders")
        if refused:
            return model_view(refused)
        hub.rescan()
        return model_view("Rescanned outputs/ and assets/.")

    with gr.Blocks(title="SDXS Studio", delete_cache=(60, 300)) as demo:
        gr.Markdown("# SDXS Studio\nOne-step diffusion in real time: type, film or draw.")
        banner = gr.Markdown(hub.status(), elem_id="banner")

        with gr.Tab("Text to image"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, placeholder="Describe the image")
                    with gr.Row():
                        style = gr.Dropdown(list(hub.styles()), value="none", label="Style")
                        num_images = checked(gr.Slider(1, 8, value=4, step=1, label="Images"))
                    with gr.Row():
                        seed = checked(gr.Number(0, label="Seed", precision=0, minimum=0))
                        randomize = gr.Checkbox(False, label="New random seed every time")
                    with gr.Row():
                        lora = gr.Dropdown([("none", "none"), *hub.choices("lora")], value=hub.lora_key or "none",
                                           label="LoRA (fits this model)")
                        lora_scale = checked(gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale"))
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Images", columns=4, height="auto", object_fit="contain")
                    t2i_info = gr.Markdown(elem_id="t2i-info")

        with gr.Tab("Live"):
            gr.HTML(html_template=LIVE_HTML, js_on_load=live_socket.client_js(), apply_default_css=False,
                    elem_id="live-view")
            with gr.Row():
                live_prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=3, elem_id="live-prompt")
                control_type = gr.Radio(list(EXTRACTORS), value="canny", label="Control", elem_id="live-control-type")
                strength = checked(gr.Slider(0, 2, value=0.8, step=0.05, label="Control strength",
                                             elem_id="live-strength"))
                live_seed = checked(gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="live-seed"))
            # /live_frame: the per-frame function for API clients (gradio_client), one frame per call
            api_frame = checked_image(gr.Image(type="numpy", visible=False, label="Frame"))
            api_out, api_control = gr.Image(format="jpeg", visible=False), gr.Image(format="jpeg", visible=False)
            api_readout, api_json = gr.Markdown(visible=False), gr.JSON(visible=False)
            api_button = gr.Button(visible=False)
            live_state = gr.State(LiveSession())

        with gr.Tab("Sketch"):
            # the pad is sdxs_core/sketch_client.js over the sketch WebSocket; the hidden Gradio pad
            # below serves /sketch for API clients
            gr.HTML(html_template=SKETCH_HTML, js_on_load=live_socket.sketch_js(), apply_default_css=False,
                    elem_id="sketch-view")
            pad = checked_image(gr.Sketchpad(type="numpy", canvas_size=(512, 512), visible=False, label="Sketch"))
            sketch_out = gr.Image(format="jpeg", visible=False)
            sketch_info = gr.Markdown(visible=False)
            with gr.Row():
                sketch_prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=3, elem_id="sketch-prompt")
                sketch_strength = checked(gr.Slider(0, 2, value=0.8, step=0.05, label="Sketch strength",
                                                    elem_id="sketch-strength"))
                sketch_seed = checked(gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="sketch-seed"))
            sketch_state = gr.State(LiveSession())

        with gr.Tab("Models"):
            gr.Markdown("Models, ControlNets and LoRAs come from the presets and from folders under "
                        "`outputs/` and `assets/` (trainer runs included). Only entries that fit the loaded "
                        "base are offered.")
            with gr.Row():
                model = gr.Dropdown(hub.choices("pipeline"), value=hub.model_key, label="Base model", scale=3)
                load = gr.Button("Load", variant="primary")
                rescan_btn = gr.Button("Rescan folders")
            controlnet = gr.Dropdown([("none", "none"), *hub.choices("controlnet")],
                                     value=hub.controlnet_key or "none", label="ControlNet (fits this model)")
            table = gr.Markdown()

        # ---- events ----
        t2i_inputs = [prompt, style, seed, randomize, num_images]
        model_outputs = [banner, model, controlnet, lora, table]
        if jobs is not None:
            with gr.Tab("Train"):
                build_train_tab(jobs, model_view, model_outputs, deny)
        prompt.change(generate, t2i_inputs, [gallery, t2i_info], trigger_mode="always_last",
                      show_progress="minimal", api_name="generate", **engine_queue)
        gr.on([style.input, seed.input, randomize.input, num_images.release], generate, t2i_inputs,
              [gallery, t2i_info], trigger_mode="always_last", show_progress="minimal",
              api_visibility="private", **engine_queue)
        lora.input(set_lora, [lora, lora_scale], model_outputs,
                   api_name="set_lora").then(generate, t2i_inputs, [gallery, t2i_info], api_visibility="private",
                                              **engine_queue)
        lora_scale.release(set_lora_scale, lora_scale, None, api_visibility="private").then(
            generate, t2i_inputs, [gallery, t2i_info], api_visibility="private", **engine_queue)

        api_button.click(live, [api_frame, live_prompt, control_type, strength, live_seed, live_state],
                         [api_out, api_control, api_readout, api_json], api_name="live_frame", **engine_queue)

        pad.change(sketch, [pad, sketch_prompt, sketch_strength, sketch_seed, sketch_state],
                   [sketch_out, sketch_info], trigger_mode="always_last", show_progress="hidden",
                   api_name="sketch", **engine_queue)

        load.click(load_model, model, model_outputs, api_name="load_model").then(  # styles are per family
            lambda: gr.update(choices=list(hub.styles()), value="none"), None, style, api_visibility="private")
        rescan_btn.click(rescan, None, model_outputs, api_name="rescan")
        controlnet.input(set_controlnet, controlnet, model_outputs,
                         api_name="set_controlnet")
        demo.load(model_view, None, model_outputs, api_visibility="private").then(
            generate, t2i_inputs, [gallery, t2i_info], api_visibility="private", **engine_queue)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="preset, local diffusers folder or hub id (default: the bundled miniature model, "
                             "or a random tiny test model when it is not installed)")
    parser.add_argument("--controlnet", default=None,
                        help="ControlNet preset, folder or hub id (default: the first local one that fits)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (use HTTPS for webcams)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="a temporary public gradio.live link")
    parser.add_argument("--auth", action="append", metavar="USER:PASS",
                        help="require a login (repeatable); logged-in users may switch the model, ControlNet and "
                             "LoRA (all of them, or those named by --admin), which otherwise only a request from "
                             "this machine may")
    parser.add_argument("--admin", action="append", metavar="USER",
                        help="an --auth account that may switch the model, ControlNet and LoRA and run training "
                             "(repeatable; default: every --auth account)")
    parser.add_argument("--ssl-certfile", default=None)
    parser.add_argument("--ssl-keyfile", default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: every core but one, left to the web server)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"),
                        help="what runs the U-Net and decoder; auto: openvino on a CPU where installed (docs/backends.md)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8", "mixed"),
                        help="openvino's precision; auto: mixed where the CPU has bf16, else fp32")
    parser.add_argument("--cache-dir", default=None, help="openvino's converted models (default ~/.cache/sdxs-studio)")
    parser.add_argument("--compile", default=None, choices=MODES,
                        help="GPU only: torch.compile the U-Net, ControlNet and decoder at load and warm them up "
                             "(reduce-overhead adds CUDA graphs); a CPU ignores it, saying so (docs/backends.md)")
    parser.add_argument("--eager", action="store_true",
                        help="run the networks eagerly, without the traced one-step graphs used on a CPU")
    parser.add_argument("--jobs-dir", default="runs/jobs", help="the training job store (shared with python -m trainers.jobs)")
    parser.add_argument("--data-root", default=None,
                        help="folders of images under this one may be picked in the Train tab (default: none, uploads only)")
    parser.add_argument("--train-threads", type=int, default=None,
                        help="CPU threads of a training job (default: half the cores; it also runs at lower priority)")
    parser.add_argument("--no-train", action="store_true", help="no Train tab and no training jobs")
    args = parser.parse_args(argv)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        parser.error("--ssl-certfile and --ssl-keyfile go together")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.train_threads is not None and args.train_threads < 1:
        parser.error("--train-threads must be >= 1")
    try:
        args.auth = access.parse_auth(args.auth)
        args.admin = access.parse_admins(args.admin, args.auth)
    except ValueError as e:
        parser.error(str(e))
    if args.data_root is not None and not Path(args.data_root).is_dir():
        parser.error(f"--data-root {args.data_root!r} is not a folder")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    limits.limit_malloc_arenas()  # before the server's threads: see its docstring
    torch.set_num_threads(args.threads or serving_threads())
    manager = None if args.no_train else JobManager(args.jobs_dir, threads=args.train_threads)
    hub = ModelHub(device=args.device, dtype=args.dtype, graphs=False if args.eager else None, backend=args.backend,
                   precision=args.precision, cache_dir=args.cache_dir, compile=args.compile,
                   extra=manager.artefacts if manager else None)
    notice = hub.start(args.model or hub.default_model(), controlnet=args.controlnet)
    print(notice.replace("**", ""))
    limits.CacheJanitor(limits.private_cache_dir()).start()  # before any component: Gradio reads the folder then
    jobs = None
    if manager is not None:
        manager.start_scheduler()  # marks jobs of a previous run interrupted, then runs the queue
        jobs = TrainJobs(manager, hub, Path(args.data_root) if args.data_root else None)
    demo = build_demo(hub, jobs, admins=args.admin)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, auth=args.auth,
                ssl_verify=not args.ssl_certfile,  # an operator's own certificate is usually self-signed
                **launch_options(hub, train=jobs is not None))


if __name__ == "__main__":
    main()
