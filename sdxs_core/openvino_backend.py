"""OpenVINO backend for the one-step path: the U-Net (with and without ControlNet residual inputs), the
ControlNet and the decoder run as OpenVINO models; the text encoder stays in torch.

Why: on a CPU, OpenVINO's kernels run SDXS's convolutions and attention faster than torch's, and in
bf16 (on CPUs with AVX512-BF16 / AMX) or int8 (NNCF post-training quantisation) much faster again;
FastSD CPU uses it for the same model. Converting a network takes seconds (tiny models) to about a
minute (SDXS-512 with int8 calibration), so each converted network is cached on disk:

- the key is a hash of the network's weights (after a LoRA is fused in), the stored precision, the
  input shapes (batch left dynamic, so one entry serves every batch size), the calibration set and
  the layers kept in float (int8) and the OpenVINO version; a second start with the same model reads
  the cached model in seconds;
- an entry is written to a temp folder and renamed into place (``sdxs_core.files.replace_dir``), and
  carries checksums of its files: an entry that fails them, or fails to load, is converted again.

Precisions (``PRECISIONS``):

- ``fp32``: the same arithmetic as torch fp32 (tested equal within 1e-4);
- ``bf16``: fp32 weights, bf16 arithmetic, only on a CPU that has bf16 instructions;
- ``int8``: U-Net (but for ``INT8_FLOAT_LAYERS``) and decoder quantised by NNCF (weights and
  activations, int8), calibrated on ``CALIBRATION_SIZE`` U-Net inputs built from the model's own
  prompts (the caller passes them; ``DEFAULT_CALIBRATION_PROMPTS`` otherwise) and seeds, and on the
  latents the fp32 U-Net makes from them for the decoder; the U-Net that takes ControlNet residuals,
  on residuals of control maps made from the fp32 model's own images. The decoder's convolutions
  that read the latents or write the image stay in float (``_end_convolutions``), as the U-Net's
  ends do; operations left in float run in bf16 where the CPU has it, else fp32;
- ``mixed``: int8 where it is safe: the decoder and the U-Net's resnets and down / up samplers; its
  attention blocks and the layers of ``INT8_FLOAT_LAYERS`` (``MIXED_FLOAT_LAYERS``) in bf16 (or fp32
  without bf16).

A LoRA is fused into the U-Net's weights before conversion: a change of LoRA or of its scale converts
the U-Net again (or finds it in the cache), and ``events`` says how long that took.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "int8", "mixed")
CALIBRATION_SIZE = 32  # (prompt, seed) pairs: U-Net inputs for int8 calibration, and as many decoder latents
DEFAULT_CALIBRATION_PROMPTS = (
    "a photo of an astronaut riding a horse", "a red car parked on a quiet street at night",
    "a bowl of fruit on a wooden table", "a portrait of an old man with a grey beard",
    "a mountain lake at sunrise, mist over the water", "a cat sleeping on a blue sofa",
    "an oil painting of a lighthouse in a storm", "a bright green parrot in a tropical forest",
)
# U-Net layers int8 leaves in float, as NNCF ignored-scope patterns on the converted model's node
# names: the first and last convolutions (the latent's 4 channels in and out) and the timestep
# embedding with its per-block projections. Quantising them too cost the bundled model 6 points of
# prompt accuracy; they are a sliver of the U-Net's arithmetic (docs/backends.md).
INT8_FLOAT_LAYERS = (r".*unet\.conv_in/.*", r".*unet\.conv_out/.*", r".*unet\.time_embedding\..*",
                     r".*\.time_emb_proj/.*")
# ``mixed`` also keeps every attention block (projections, attention, feed-forward) in float: int8
# there and at the ends is what costs the prompt; the resnets' convolutions, most of the arithmetic
# at 512x512, take int8 without it (docs/backends.md).
MIXED_FLOAT_LAYERS = INT8_FLOAT_LAYERS + (r".*\.attentions\..*",)
# control images the U-Net with ControlNet residual inputs is calibrated with, in turn (see
# ``OpenVINOBackend._calibration_control_maps``)
CONTROL_CALIBRATION_MAPS = ("canny", "sketch", "grey", "blank")
# converted graphs ("kinds") -> the engine network whose weights they hold, and back
_WHICH = {"unet": "unet", "unet+control": "unet", "decoder": "decoder", "controlnet": "controlnet"}
_KINDS = {w: tuple(k for k, v in _WHICH.items() if v == w) for w in set(_WHICH.values())}
_FORMAT = 2  # bump when the layout of a cache entry changes


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _core():
    """One OpenVINO runtime per process. Cached weights are read into memory, not memory-mapped: a
    cache entry rewritten or damaged on disk later must not pull pages out from under a running model."""
    import openvino as ov

    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})
    return core


def cpu_supports_bf16() -> bool:
    """OpenVINO's own view: it lists BF16 among the CPU plugin's capabilities only where it has the
    instructions (AVX512-BF16 or AMX); elsewhere bf16 would be emulated, slower than fp32."""
    return available() and "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def default_precision() -> str:
    """``mixed`` (int8 U-Net resnets and decoder, bf16 attention and ControlNet) where the CPU has bf16:
    the fastest path whose quality drop on the miniature default stays within the 1-point bound with
    and without a ControlNet (docs/backends.md), at the cost of one int8 calibration per model and
    LoRA (then cached); fp32 elsewhere."""
    return "mixed" if cpu_supports_bf16() else "fp32"


def resolve_precision(precision: str | None) -> str:
    if precision in (None, "auto"):
        return default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of auto, {', '.join(PRECISIONS)}")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ValueError("precision='bf16' needs a CPU with bf16 instructions (AVX512-BF16 or AMX); this one has "
                         "none: use precision='fp32' (or 'int8' / 'mixed')")
    return precision


def default_cache_dir() -> Path:
    """``$SDXS_CACHE_DIR/openvino``, else ``~/.cache/sdxs-studio/openvino`` (XDG_CACHE_HOME honoured)."""
    if os.environ.get("SDXS_CACHE_DIR"):
        return Path(os.environ["SDXS_CACHE_DIR"]) / "openvino"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sdxs-studio" / "openvino"


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) and the module's config; a U-Net
    whose LoRAs were unloaded hashes as it did before they were loaded."""
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    h.update(json.dumps(dict(config) if config is not None else {}, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        if "lora_" in name:  # fused into the base weights already (``fused_unet``)
            continue
        name = name.replace(".base_layer.", ".")  # PEFT's wrapper, left behind when a LoRA is unloaded
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        h.update(memoryview(raw.numpy()).cast("B"))
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ConversionEvent:
    """One network made ready: converted (``cached`` False) or read from the disk cache."""
    network: str
    precision: str
    seconds: float
    cached: bool
    entry: str  # the cache folder's name

    def __str__(self) -> str:
        how = "read from the cache" if self.cached else "converted"
        return f"OpenVINO {self.precision} {self.network}: {how} in {self.seconds:.1f} s"


class _Network:
    """One converted network: the IR on disk and its compiled forms. Batch 1 (a live frame, one
    image) is compiled for its exact shapes, the fastest; every larger batch shares one compile whose
    batch stays dynamic: a compile per batch size held ~30 MB each on the bundled model and cost a
    compile whenever the Images slider met a new value (docs/backends.md)."""

    def __init__(self, model, hint: str, threads: int):
        self.model, self.hint, self.threads = model, hint, threads
        self.compiled: dict[tuple, object] = {}
        # a compiled model's __call__ reuses one infer request: the app's concurrent sessions take turns
        # (each call already uses every thread it was given)
        self._lock = threading.Lock()

    def __call__(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Every output, in the model's order (copies: share_outputs is off)."""
        with self._lock:
            return self.compiled_for(tuple(a.shape for a in inputs))(inputs).to_tuple()

    def compiled_for(self, shapes: tuple):
        """The compiled model for inputs of ``shapes``: keyed by the shapes at batch 1, else "batch"."""
        key = shapes if shapes[0][0] == 1 else "batch"
        compiled = self.compiled.get(key)
        if compiled is None:
            import openvino as ov

            model = self.model
            if key != "batch":
                model = model.clone()
                model.reshape({model.inputs[i]: ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
            compiled = _core().compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads})
            self.compiled[key] = compiled
        return compiled


class OpenVINOBackend:
    """Runs ``OneStepEngine``'s one-step U-Net and decoder in OpenVINO (see the module docstring)."""

    name = "openvino"

    def __init__(self, precision: str | None = "auto", cache_dir: str | os.PathLike | None = None,
                 calibration_prompts: list[str] | None = None, calibration_size: int = CALIBRATION_SIZE,
                 threads: int | None = None):
        if not available():
            raise ImportError("the OpenVINO backend needs the openvino package: pip install -r requirements.txt "
                              "(or use backend='torch')")
        self.precision = resolve_precision(precision)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if calibration_size < 1:
            raise ValueError(f"calibration_size must be >= 1, got {calibration_size}")
        self.calibration_prompts = list(calibration_prompts or DEFAULT_CALIBRATION_PROMPTS)
        self.calibration_size = calibration_size
        self.threads = threads or torch.get_num_threads()
        self.float_hint = "bf16" if self.precision == "bf16" or (self.precision != "fp32" and cpu_supports_bf16()) \
            else "f32"
        self.events: list[ConversionEvent] = []
        self._networks: dict[tuple, _Network] = {}
        self._hashes: dict[str, str] = {}  # "unet" / "decoder" -> weights_hash, until a network changes
        self._latents: dict[tuple, list[torch.Tensor]] = {}  # calibration latents, until a network changes
        self._lock = threading.RLock()

    @property
    def float_layers(self) -> tuple[str, ...]:
        """The U-Net's layers an int8 U-Net keeps in float (NNCF ignored-scope patterns)."""
        return MIXED_FLOAT_LAYERS if self.precision == "mixed" else INT8_FLOAT_LAYERS

    @property
    def label(self) -> str:
        return f"openvino {self.precision}"

    def _stored(self, network: str) -> str:
        """The precision of the stored model: "int8" (quantised) or "fp32" (run at ``float_hint``). The
        ControlNet stays float: calibrating it would need control images of every kind a user may send."""
        return "int8" if network != "controlnet" and self.precision in ("int8", "mixed") else "fp32"

    def networks_changed(self, which: tuple[str, ...] = ("unet", "decoder")) -> None:
        """The engine changed networks (by default a LoRA or its scale: the U-Net, and an int8 decoder
        calibrated on its latents; ``("controlnet",)`` for a ControlNet switch, and then an int8 U-Net
        with residual inputs too, calibrated on the old ControlNet's residuals): the next call converts
        them again (or reads the cache)."""
        with self._lock:
            kinds = {k for w in which for k in _KINDS[w]}
            if "controlnet" in which and self._stored("unet") == "int8":
                kinds.add("unet+control")
            self._latents.clear()
            for key in [k for k in self._networks if k[0] in kinds]:
                del self._networks[key]
            for w in which:
                self._hashes.pop(w, None)

    def _hash(self, engine, which: str) -> str:
        if which not in self._hashes:
            module = {"decoder": lambda: engine.vae, "controlnet": lambda: engine.controlnet,
                      "unet": lambda: fused_unet(engine.unet, engine.loras)}[which]()
            self._hashes[which] = weights_hash(module)
        return self._hashes[which]

    # ---- the engine's calls ------------------------------------------------------------------------
    def unet(self, engine, x, t, embeds, down=None, mid=None) -> torch.Tensor:
        residuals = () if down is None else (mid, *down)
        kind = "unet" if down is None else "unet+control"
        net = self._network(engine, kind, (x, t, embeds, *residuals))
        (out,) = net([_np(x), _np(t), _np(embeds), *(_np(r) for r in residuals)])
        return torch.from_numpy(out).to(x.dtype)

    def controlnet(self, engine, x, t, embeds, control, scale: float):
        """``(down_residuals, mid_residual)`` as the torch ControlNet returns them; the strength is an
        input of the converted graph, so moving it converts nothing."""
        example = (x, t, embeds, control, torch.tensor(float(scale), dtype=torch.float32))
        mid, *down = self._network(engine, "controlnet", example)([_np(e) for e in example])
        return tuple(torch.from_numpy(d).to(x.dtype) for d in down), torch.from_numpy(mid).to(x.dtype)

    def decode(self, engine, latents) -> torch.Tensor:
        net = self._network(engine, "decoder", (latents,))
        (image,) = net([_np(latents)])
        return torch.from_numpy(image)

    def prepare(self, engine, height: int | None = None, width: int | None = None) -> list[ConversionEvent]:
        """Convert (or read) the U-Net and the decoder for one size now, so the first image does not wait;
        with a ControlNet attached, also it and the U-Net that takes its residuals."""
        h, w = height or engine.default_size, width or engine.default_size
        before = len(self.events)
        x, t, embeds = _example(engine, h, w)
        self._network(engine, "unet", (x, t, embeds))
        self._network(engine, "decoder", (x,))
        if engine.controlnet is not None:
            self.prepare_controlnet(engine, h, w)
        return self.events[before:]

    def prepare_controlnet(self, engine, height: int | None = None, width: int | None = None) -> None:
        """Convert (or read) the attached ControlNet, and the U-Net with residual inputs, for one size now
        (at a switch, not at the next frame)."""
        h, w = height or engine.default_size, width or engine.default_size
        x, t, embeds = _example(engine, h, w)
        cond = torch.zeros(1, 3, h, w)
        self._network(engine, "controlnet", (x, t, embeds, cond, torch.tensor(1.0)))
        down, mid = self.controlnet(engine, x, t, embeds, cond, 1.0)  # the residuals' shapes
        self._network(engine, "unet+control", (x, t, embeds, mid, *down))

    # ---- conversion and cache --------------------------------------------------------------------------
    def _network(self, engine, kind: str, example: tuple) -> _Network:
        shapes = _dynamic_batch_shapes(kind, example)
        mem_key = (kind, shapes)
        with self._lock:
            net = self._networks.get(mem_key)
            if net is None:
                start = time.perf_counter()
                model, cached, entry = self._load_or_convert(engine, kind, example, shapes)
                stored = self._stored(_WHICH[kind])
                net = _Network(model, "f32" if self.precision == "fp32" else self.float_hint, self.threads)
                net.compiled_for(tuple(tuple(e.shape) for e in example))  # part of being ready, so timed here
                self._networks[mem_key] = net
                runs_at = "int8" if stored == "int8" else "bf16" if net.hint == "bf16" else "fp32"
                self.events.append(ConversionEvent(kind, runs_at,
                                                   time.perf_counter() - start, cached, entry))
            return net

    def _module(self, engine, kind: str) -> torch.nn.Module:
        from .graphs import _ControlNetGraph, _DecoderGraph, _UNetGraph

        if kind == "decoder":
            return _DecoderGraph(engine.vae).eval()
        if kind == "controlnet":
            return _ControlNetGraph(engine.controlnet).eval()
        return _UNetGraph(fused_unet(engine.unet, engine.loras), kind == "unet+control").eval()

    def _entry_key(self, engine, kind: str, shapes: tuple) -> str:
        import openvino as ov

        which = _WHICH[kind]
        stored = self._stored(which)
        parts = {"format": _FORMAT, "network": kind, "weights": self._hash(engine, which), "stored": stored,
                 "shapes": shapes, "openvino": ov.get_version()}
        if stored == "int8":
            parts["calibration"] = [self.calibration_prompts, self.calibration_size]
            parts["float_layers"] = self.float_layers if kind != "decoder" else "ends by channels"
            if kind == "unet+control":  # calibrated on this ControlNet's residuals
                parts["control_maps"] = CONTROL_CALIBRATION_MAPS
                parts["controlnet"] = self._hash(engine, "controlnet")
            if kind == "decoder":  # calibrated on the U-Net's latents: they depend on its weights too
                parts["unet"] = self._hash(engine, "unet")
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _load_or_convert(self, engine, kind: str, example: tuple, shapes: tuple):
        entry = self.cache_dir / self._entry_key(engine, kind, shapes)
        model = self._read_entry(entry)
        if model is not None:
            return model, True, entry.name
        model = self._convert(engine, kind, self._module(engine, kind), example, shapes)
        self._write_entry(entry, model, kind)
        return model, False, entry.name

    @staticmethod
    def _read_entry(entry: Path):
        """The cached model, or None when absent or damaged (then it is converted again)."""
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            for name, digest in meta["files"].items():
                if _file_sha256(entry / name) != digest:
                    raise ValueError(f"{name} does not match its checksum")
            return _core().read_model(str(entry / "model.xml"))
        except Exception as e:  # a damaged entry costs a conversion, never a failed start
            warnings.warn(f"OpenVINO cache entry {entry.name} is damaged ({type(e).__name__}: {e}); converting again",
                          RuntimeWarning, stacklevel=5)
            return None

    def _write_entry(self, entry: Path, model, kind: str) -> None:
        import openvino as ov

        entry.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
        try:
            ov.save_model(model, str(staged / "model.xml"), compress_to_fp16=False)
            files = {n: _file_sha256(staged / n) for n in ("model.xml", "model.bin")}
            meta = {"network": kind, "precision": self.precision, "files": files, "openvino": ov.get_version()}
            (staged / "meta.json").write_text(json.dumps(meta, indent=2))
            from .files import replace_dir

            replace_dir(staged, entry)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _convert(self, engine, kind: str, module: torch.nn.Module, example: tuple, shapes: tuple):
        """The module as an OpenVINO model, through ``torch.export``: ``convert_model(module)`` would
        trace it with TorchScript, whose graphs are never freed (about 50 MB per conversion of the
        bundled U-Net, at every LoRA change)."""
        import openvino as ov
        from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

        example = tuple(e.float() if e.is_floating_point() else e for e in example)
        batched = [len(d) > 0 and d[0] == -1 for d in shapes]
        dims = [{0: torch.export.Dim.AUTO} if b else None for b in batched]
        if kind == "unet+control":  # forward(x, t, embeds, *residuals)
            dims = dims[:3] + [tuple(dims[3:])]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # export notes on shape guards: the shapes are pinned below
            program = torch.export.export(  # exported at batch 2: export would specialise a batch of 1
                module, tuple(torch.cat([e, e]) if b else e for e, b in zip(example, batched)), strict=False,
                dynamic_shapes=tuple(dims))
            graph = TorchFXPythonDecoder.from_exported_program(program)  # the decomposed graph it converts
            model = ov.convert_model(graph)
        _name_by_module(model, graph.pt_module.graph)
        model.reshape({model.inputs[i]: ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
        if self._stored(_WHICH[kind]) == "int8":
            model = self._quantise(engine, kind, model)
        return model

    # ---- int8 -----------------------------------------------------------------------------------------
    def calibration_inputs(self, engine, height: int, width: int) -> list[tuple[torch.Tensor, ...]]:
        """``calibration_size`` U-Net inputs ``(x, t, embeds)``: prompt i mod len(prompts), seed i, as
        ``generate`` builds them for a one-step image."""
        t, init_sigma, c_in, _, _ = engine._one_step
        prompts = [self.calibration_prompts[i % len(self.calibration_prompts)] for i in range(self.calibration_size)]
        embeds = engine.encode_prompt(prompts).float()
        noise = engine.make_noise(list(range(self.calibration_size)), height, width).float()
        return [(noise[i:i + 1] * init_sigma * c_in, t, embeds[i:i + 1]) for i in range(self.calibration_size)]

    def _quantise(self, engine, kind: str, model):
        import logging

        import nncf

        nncf.set_log_level(logging.WARNING)  # its INFO notes list every layer left in float: hundreds of lines

        if engine._one_step is None:
            raise ValueError("int8 calibration needs the one-step scheduler path; use precision 'fp32' or 'bf16'")
        shape = model.inputs[0].get_partial_shape()  # latents [N, C, h, w], for both networks
        h, w = (shape[i].get_length() * engine.vae_scale_factor for i in (2, 3))
        inputs = self.calibration_inputs(engine, h, w)
        if kind == "decoder":
            data = [_np(lat) for lat in self._calibration_latents(engine, inputs)]
        elif kind == "unet":
            data = [[_np(a) for a in item] for item in inputs]
        else:
            maps = self._calibration_control_maps(engine, inputs)
            data = [[_np(a) for a in item] + [_np(r) for r in self._control_residuals(engine, item, cond)]
                    for item, cond in zip(inputs, maps)]
        if kind == "decoder":
            options = dict(ignored_scope=nncf.IgnoredScope(names=_end_convolutions(model), validate=False))
        else:
            options = dict(model_type=nncf.ModelType.TRANSFORMER,
                           ignored_scope=nncf.IgnoredScope(patterns=list(self.float_layers), validate=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nncf.quantize(model, nncf.Dataset(data), subset_size=len(data), **options)

    @torch.inference_mode()
    def _calibration_latents(self, engine, inputs):
        """What the decoder sees: the fp32 torch U-Net's one-step latents, scaled as ``engine.decode`` does.
        Kept until a network changes: the decoder's calibration and the control maps both need them, and
        at SDXS-512 they cost a minute."""
        key = (self._hash(engine, "unet"), tuple(inputs[0][0].shape), len(inputs))
        if key not in self._latents:
            _, init_sigma, c_in, a, b = engine._one_step
            unet = fused_unet(engine.unet, engine.loras)
            out = []
            for x_in, t, embeds in inputs:
                x = x_in / c_in
                pred = unet(x_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
                out.append((a * x + b * pred) / engine.vae.config.scaling_factor)
            self._latents = {key: out}
        return self._latents[key]

    @torch.inference_mode()
    def _calibration_control_maps(self, engine, inputs) -> list[torch.Tensor]:
        """One control image per calibration input, ``[1, 3, H, W]`` in [0, 1], cycling through
        ``CONTROL_CALIBRATION_MAPS`` made from the image the fp32 model draws for that input.

        Why: the U-Net's int8 ranges after the residual additions must cover the residuals real maps
        give; a blank map alone gives the smallest ones and cost 3.4 points of prompt accuracy. The
        ControlNet's kind is not known here, so line maps (edges, sketch) and a smooth grey map (the
        nearest stand-in for depth) are mixed with the blank map of an empty sketch pad."""
        from .control import canny, sketch

        makers = {"blank": np.zeros_like, "canny": canny, "sketch": sketch,
                  "grey": lambda rgb: np.repeat(rgb.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)}
        maps = []
        for i, latents in enumerate(self._calibration_latents(engine, inputs)):
            image = engine.vae.decode(latents.to(next(engine.vae.parameters()).dtype), return_dict=False)[0]
            image = image[0].float().permute(1, 2, 0).numpy()
            lo, hi = image.min(), image.max()  # stretched, so that a dim image still has edges to find
            rgb = np.round((image - lo) * (255 / max(hi - lo, 1e-6))).astype(np.uint8)
            control = makers[CONTROL_CALIBRATION_MAPS[i % len(CONTROL_CALIBRATION_MAPS)]](rgb)
            maps.append(torch.from_numpy(np.ascontiguousarray(control)).permute(2, 0, 1)[None].float() / 255)
        return maps

    @staticmethod
    @torch.inference_mode()
    def _control_residuals(engine, item, cond):
        """The engine's ControlNet residuals ``(mid, *down)`` for one calibration input and control image."""
        x, t, embeds = item
        down, mid = engine.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=cond.to(x.dtype),
                                      conditioning_scale=1.0, return_dict=False)
        return (mid, *down)


def _name_by_module(model, graph) -> None:
    """Prefix each op's name with the module it came from (``__module.unet.conv_in/...``), as a
    TorchScript conversion names them: ``INT8_FLOAT_LAYERS`` and ``MIXED_FLOAT_LAYERS`` match these."""
    modules = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            modules[node.name] = list(stack.values())[-1][0]
    for op in model.get_ops():
        name = op.get_friendly_name()
        module = modules.get(name.split("/", 1)[0])
        if module and "/" in name:
            op.set_friendly_name(f"__module.{module}/{name}")


def _end_convolutions(model) -> list[str]:
    """The decoder's convolutions that read the latents or write the RGB image, which int8 leaves in
    float: found by their channels (names change as OpenVINO fuses the output scaling into the last).
    Like the U-Net's ends, they carry most of what int8 costs in quality at a sliver of the arithmetic."""
    latent_channels = model.inputs[0].get_partial_shape()[1].get_length()
    ends = []
    for op in model.get_ops():
        if op.get_type_name() == "Convolution":
            out_channels, in_channels = (op.get_input_partial_shape(1)[i].get_length() for i in (0, 1))
            if in_channels == latent_channels or out_channels == 3:
                ends.append(op.get_friendly_name())
    return ends


def _example(engine, height: int, width: int) -> tuple:
    """One-step U-Net inputs ``(x, t, embeds)`` of the right shapes, to convert and compile with."""
    t = engine._one_step[0] if engine._one_step is not None else torch.tensor([999])
    embeds = torch.zeros(1, engine.tokenizer.model_max_length, engine.unet.config.cross_attention_dim)
    return engine.make_noise([0], height, width), t, embeds


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).contiguous().numpy()


def _dynamic_batch_shapes(kind: str, example: tuple) -> tuple:
    """Input shapes with the batch left dynamic (-1), except the timestep (shape [1]) and scalars."""
    return tuple(tuple(e.shape) if (i == 1 and kind != "decoder") or e.dim() == 0 else (-1, *e.shape[1:])
                 for i, e in enumerate(example))


def fused_unet(unet: torch.nn.Module, loras: dict[str, float]) -> torch.nn.Module:
    """``unet`` with its active LoRAs merged into the base weights (a copy; the engine's U-Net keeps its
    adapters so they can still be re-scaled or removed). Without LoRAs, ``unet`` itself."""
    if not loras:
        return unet
    from peft.tuners.tuners_utils import BaseTunerLayer

    fused = copy.deepcopy(unet)
    with torch.no_grad():
        for module in fused.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge(adapter_names=[n for n in loras if n in module.scaling])
    return fused
