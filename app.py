"""SDXS Studio in the browser: text-to-image as you type, a live webcam loop and a sketch pad.

    python app.py                                    # bundled miniature model (or a random tiny one)
    python app.py --model sdxs-512-dreamshaper --controlnet sdxs-512-dreamshaper-sketch --device cuda
    python app.py --host 0.0.0.0 --ssl-certfile cert.pem --ssl-keyfile key.pem   # webcams on other machines

This file is wiring only: models, switching and generation live in ``sdxs_core.studio`` and the
live loop in ``sdxs_core.stream`` (its WebSocket transport and browser client in ``sdxs_core.live_socket``).
Browsers need HTTPS (or localhost) to open a webcam.
"""

import argparse
from dataclasses import asdict

import gradio as gr
import torch

from sdxs_core import live_socket
from sdxs_core.control import EXTRACTORS
from sdxs_core.devices import serving_threads
from sdxs_core.errors import SDXSError
from sdxs_core.stream import STAGES, FrameResult, LiveParams, LiveSession, LiveStats, control_mismatch
from sdxs_core.studio import STYLES, ModelHub, TextRequest, sketch_to_control, text_to_image

DEFAULT_PROMPT = "a red heart above a blue star on a white background"
LIVE_STREAMS = 2  # webcams served at once; a third page retries until a slot frees
LIVE_TURN_S = 300  # a stream keeps its slot this long at least, longer while nobody else waits
ENGINE_SLOTS = 2  # concurrent request/response generations (text, sketch, API), apart from streams
IMAGE_HEIGHT = 400  # px; small models' frames (64x64) are scaled up to this
CSS = """
#live-readout, #t2i-info, #sketch-info { font-variant-numeric: tabular-nums; }
#sketch-out img { width: 100%; height: 100%; object-fit: contain; }
.sdxs-live-row { display: flex; gap: 0.75em; }
.sdxs-live-row figure { flex: 1; margin: 0; min-width: 0; }
.sdxs-live-row figcaption { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.sdxs-live-row video, .sdxs-live-row img { width: 100%; aspect-ratio: 1; object-fit: contain;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); display: block; }
.sdxs-live-row video { object-fit: cover; }
.sdxs-live-row video.mirrored { transform: scaleX(-1); }
.sdxs-live-bar { display: flex; gap: 1em; align-items: center; margin: 0.6em 0; }
#live-start { background: var(--button-primary-background-fill); color: var(--button-primary-text-color);
  border: none; border-radius: var(--button-large-radius); padding: var(--button-large-padding);
  font-weight: var(--button-large-text-weight); font-size: var(--button-large-text-size); min-width: 12em;
  cursor: pointer; }
#live-start:hover { background: var(--button-primary-background-fill-hover); }
#live-mirror { appearance: auto; accent-color: var(--color-accent); width: 1.1em; height: 1.1em; margin: 0 0.3em 0 0; }
#live-readout { min-height: 3em; }
#banner { border-left: 4px solid var(--color-accent); padding-left: 0.75em; }
"""


# The Live tab's own markup: sdxs_core/live_client.js streams the webcam over a WebSocket
# (sdxs_core/live_socket.py) and fills these elements; the settings are the Gradio controls below it.
LIVE_HTML = """<div class="sdxs-live">
  <div class="sdxs-live-row">
    <figure><figcaption>Webcam</figcaption><video id="live-webcam" autoplay muted playsinline></video></figure>
    <figure id="live-out"><figcaption>Generated</figcaption><img alt="generated frame"></figure>
    <figure id="live-control"><figcaption>Control map</figcaption><img alt="control map"></figure>
  </div>
  <div class="sdxs-live-bar">
    <button id="live-start">Start webcam</button>
    <label><input type="checkbox" id="live-mirror" checked> Mirror</label>
  </div>
  <div id="live-readout">Press Start webcam: FPS and latency appear here.</div>
</div>"""


def launch_options(hub: ModelHub) -> dict:
    """``launch`` arguments beyond host and port: theme and CSS (Gradio 6 takes them here; system
    fonts, so nothing is fetched) and the live loop's WebSocket route, served beside the app."""
    theme = gr.themes.Soft(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])
    gate = live_socket.LiveGate(slots=LIVE_STREAMS, turn_s=LIVE_TURN_S)
    return {"theme": theme, "css": CSS, "app_kwargs": {"routes": live_socket.live_routes(hub, gate)}}


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
    notice = control_mismatch(trained_on, params.control_type)
    return text + (f"\n\n⚠️ {notice}" if notice else "")


def catalogue(hub: ModelHub) -> str:
    rows = ["| kind | entry | made for | fits the loaded base |", "|---|---|---|---|"]
    for kind in ("controlnet", "lora"):
        for e in hub.entries(kind):
            rows.append(f"| {kind} | {e.label} | {e.base or '?'} | {'yes' if hub.fits(e) else 'no'} |")
    if len(rows) == 2:
        rows.append("| | no ControlNets or LoRAs found under outputs/ or assets/ | | |")
    return "\n".join(rows)


# ---- the page -------------------------------------------------------------------------------------
def build_demo(hub: ModelHub) -> gr.Blocks:
    """The Blocks app over one ``ModelHub``; every handler delegates to sdxs_core."""
    engine_queue = dict(concurrency_id="engine", concurrency_limit=ENGINE_SLOTS)

    def run_live(session: LiveSession, frame, params: LiveParams) -> FrameResult | None:
        with hub.using() as engine:
            return session.process(engine, frame, params)

    def generate(prompt, style, seed, randomize, num_images):
        try:
            out = text_to_image(hub, TextRequest(prompt or "", style, int(seed or 0), bool(randomize), int(num_images)))
        except (SDXSError, ValueError) as e:
            gr.Warning(str(e))
            return gr.skip(), f"⚠️ {e}"
        per_image = out.timings.total_ms / len(out.images)
        gallery = [(im, f"seed {s} · {per_image:.0f} ms") for im, s in zip(out.images, out.seeds)]
        return gallery, timing_line(out.timings, len(out.images))

    def live(frame, prompt, control_type, strength, seed, session: LiveSession):
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            params = LiveParams(prompt or "", control_type, float(strength), int(seed or 0))
            result = run_live(session, frame, params)
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
        control = sketch_to_control(canvas)
        if control is None:
            return gr.skip(), "Draw on the pad: every stroke regenerates."
        try:
            params = LiveParams(prompt or "", "none", float(strength), int(seed or 0))
            result = run_live(session, control, params)
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

    def load_model(key):
        return model_view(hub.load_model(key))

    def rescan():
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
                        style = gr.Dropdown(list(STYLES), value="none", label="Style")
                        num_images = gr.Slider(1, 8, value=4, step=1, label="Images")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        randomize = gr.Checkbox(False, label="New random seed every time")
                    with gr.Row():
                        lora = gr.Dropdown([("none", "none"), *hub.choices("lora")], value=hub.lora_key or "none",
                                           label="LoRA (fits this model)")
                        lora_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Images", columns=4, height="auto", object_fit="contain")
                    t2i_info = gr.Markdown(elem_id="t2i-info")

        with gr.Tab("Live"):
            gr.HTML(html_template=LIVE_HTML, js_on_load=live_socket.client_js(), apply_default_css=False,
                    elem_id="live-view")
            with gr.Row():
                live_prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=3, elem_id="live-prompt")
                control_type = gr.Radio(list(EXTRACTORS), value="canny", label="Control", elem_id="live-control-type")
                strength = gr.Slider(0, 2, value=0.8, step=0.05, label="Control strength", elem_id="live-strength")
                live_seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="live-seed")
            # /live_frame: the per-frame function for API clients (gradio_client), one frame per call
            api_frame = gr.Image(type="numpy", visible=False)
            api_out, api_control = gr.Image(format="jpeg", visible=False), gr.Image(format="jpeg", visible=False)
            api_readout, api_json = gr.Markdown(visible=False), gr.JSON(visible=False)
            api_button = gr.Button(visible=False)
            live_state = gr.State(LiveSession())

        with gr.Tab("Sketch"):
            with gr.Row():
                pad = gr.Sketchpad(type="numpy", canvas_size=(512, 512), label="Draw (black on white)",
                                   brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"),
                                   layers=False, transforms=(), height=IMAGE_HEIGHT, elem_id="sketch-pad")
                sketch_out = gr.Image(label="Generated", format="jpeg", interactive=False, height=IMAGE_HEIGHT,
                                      elem_id="sketch-out")
            sketch_info = gr.Markdown("Draw on the pad: every stroke regenerates.", elem_id="sketch-info")
            with gr.Row():
                sketch_prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=3)
                sketch_strength = gr.Slider(0, 2, value=0.8, step=0.05, label="Sketch strength")
                sketch_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
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
        prompt.change(generate, t2i_inputs, [gallery, t2i_info], trigger_mode="always_last",
                      show_progress="minimal", api_name="generate", **engine_queue)
        gr.on([style.input, seed.input, randomize.input, num_images.release], generate, t2i_inputs,
              [gallery, t2i_info], trigger_mode="always_last", show_progress="minimal",
              api_visibility="private", **engine_queue)
        lora.input(lambda key, scale: model_view(hub.set_lora(key, scale)), [lora, lora_scale], model_outputs,
                   api_name="set_lora").then(generate, t2i_inputs, [gallery, t2i_info], api_visibility="private",
                                              **engine_queue)
        lora_scale.release(hub.set_lora_scale, lora_scale, None, api_visibility="private").then(
            generate, t2i_inputs, [gallery, t2i_info], api_visibility="private", **engine_queue)

        api_button.click(live, [api_frame, live_prompt, control_type, strength, live_seed, live_state],
                         [api_out, api_control, api_readout, api_json], api_name="live_frame", **engine_queue)

        pad.change(sketch, [pad, sketch_prompt, sketch_strength, sketch_seed, sketch_state],
                   [sketch_out, sketch_info], trigger_mode="always_last", show_progress="hidden",
                   api_name="sketch", **engine_queue)

        load.click(load_model, model, model_outputs, api_name="load_model")
        rescan_btn.click(rescan, None, model_outputs, api_name="rescan")
        controlnet.input(lambda key: model_view(hub.set_controlnet(key)), controlnet, model_outputs,
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
    parser.add_argument("--ssl-certfile", default=None)
    parser.add_argument("--ssl-keyfile", default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: every core but one, left to the web server)")
    parser.add_argument("--eager", action="store_true",
                        help="run the networks eagerly, without the traced one-step graphs used on a CPU")
    args = parser.parse_args(argv)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        parser.error("--ssl-certfile and --ssl-keyfile go together")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or serving_threads())
    hub = ModelHub(device=args.device, dtype=args.dtype, graphs=False if args.eager else None)
    notice = hub.start(args.model or hub.default_model(), controlnet=args.controlnet)
    print(notice.replace("**", ""))
    demo = build_demo(hub)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                ssl_verify=not args.ssl_certfile,  # an operator's own certificate is usually self-signed
                **launch_options(hub))


if __name__ == "__main__":
    main()
