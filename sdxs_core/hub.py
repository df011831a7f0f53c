"""The app's model holder: which model is loaded, and safe switching between the catalogue's entries.

Generations from many sessions run concurrently; a model, ControlNet or LoRA switch waits for
them to finish and holds new ones back until it is done. What exists to switch to is
``sdxs_core.catalogue``.
"""

import itertools
import secrets
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .catalogue import (OUTPUTS, STYLES, TINY_NOTE, Entry, control_rank, control_type_of, discover, ensure_tiny_model,
                        local_path, pipeline_entry, read_json, same_files, styles_for)
from .devices import resolve_device, resolve_dtype
from .errors import ModelUnavailableError, SDXSError, check
from .fits import FAMILY_SHAPES, BaseShape, lora_fits
from .gpu import MODES, accelerate
from .loading import load_controlnet, load_engine
from .presets import ASSETS, DEFAULT_MODEL, PRESETS

LORA_NAME = "studio"
CONTROLNETS_KEPT = 4  # loaded ControlNets kept for switching back: the same network reuses its traced graphs


class _SwitchLock:
    """Many generations at once, or one switch alone. A waiting switch holds back new
    generations, so a busy live stream cannot starve it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ModelHub:
    """Holds the loaded engine for every session of the app; never raises ``SDXSError`` to the UI:
    each action returns a notice to show instead."""

    def __init__(self, search_dirs: list[Path] | None = None, device: str | None = None, dtype: str | None = None,
                 outputs: Path = OUTPUTS, graphs: bool | None = None, extra: Callable[[], dict[str, Path]] | None = None,
                 backend: str = "torch", precision: str | None = "auto", cache_dir: str | None = None,
                 compile: str | None = None):
        self.search_dirs = list(search_dirs) if search_dirs is not None else [OUTPUTS, ASSETS]
        self.extra = extra  # more folders to offer, asked at every rescan (finished training jobs)
        self.outputs = outputs
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.graphs = graphs  # traced one-step graphs (None: on a CPU), see sdxs_core.graphs
        self.backend, self.precision, self.cache_dir = backend, precision, cache_dir  # see load_engine
        if compile is not None and compile not in MODES:
            raise ValueError(f"compile={compile!r}: choose one of {', '.join(MODES)} (or None)")
        self.compile = compile  # a sdxs_core.gpu mode: compile each engine and ControlNet at load (CUDA only)
        self.engine = None  # OneStepEngine, replaced only under the switch lock
        self.model_key: str | None = None
        self.controlnet_key: str | None = None
        self.lora_key: str | None = None
        self.lora_scale = 1.0
        self._adapters = itertools.count()  # fresh engine adapter names, so old and new LoRA can coexist
        self.notes: dict[str, str] = {}  # key -> standing notice shown while that model is loaded
        self._operator: dict[tuple[str, str], Entry] = {}  # paths given on the command line
        self._entries: dict[tuple[str, str], Entry] = {}
        self._lock = _SwitchLock()
        self._controlnets: OrderedDict[tuple, object] = OrderedDict()  # (source, mtime) -> loaded ControlNet
        self.rescan()

    # ---- what is offered ----------------------------------------------------------------------
    def rescan(self) -> None:
        found = {(e.kind, e.key): e for e in discover(self.search_dirs, self.extra() if self.extra else None)}
        self._entries = {**found, **self._operator}

    def register(self, source: str, kind: str = "pipeline") -> str:
        """Offer a model the operator named on the command line (any path or hub id); returns its key."""
        if (kind, source) in self._entries:
            return source
        path = Path(source).expanduser()
        resolved = str(path.resolve()) if path.exists() else source
        same = next((e for e in self.entries(kind) if same_files(e) == (kind, resolved)), None)
        if same is not None:  # already offered under another key (a preset's name): one entry, the operator's pick
            self._operator[(kind, same.key)] = same
            return same.key
        label = f"{source} (command line)"
        if kind == "pipeline" and path.is_dir():
            entry = pipeline_entry(source, Path(resolved), label)
        else:
            control = control_type_of(path) if kind == "controlnet" and path.is_dir() else ""
            entry = Entry(source, kind, resolved, label, "", control)
        self._operator[(kind, source)] = entry
        self._entries[(kind, source)] = entry
        return source

    def entries(self, kind: str) -> list[Entry]:
        return [e for (k, _), e in self._entries.items() if k == kind]

    def styles(self) -> tuple[str, ...]:
        """The style presets that mean something to the loaded model (``catalogue.FAMILY_STYLES``)."""
        entry = self.lookup("pipeline", self.model_key)
        return styles_for(entry.family) if entry is not None else tuple(STYLES)

    @property
    def controlnet_control(self) -> str:
        """The attached ControlNet's control type ("" when none is attached or it is unknown)."""
        entry = self.lookup("controlnet", self.controlnet_key)
        return entry.control if entry else ""

    @property
    def shape(self) -> BaseShape | None:
        return BaseShape.from_config(self.engine.unet.config) if self.engine else None

    def fits(self, entry: Entry, unet=None) -> bool:
        """Whether a ControlNet or LoRA entry fits the loaded base (or ``unet``, e.g. a teacher's)."""
        unet = unet if unet is not None else (self.engine.unet if self.engine is not None else None)
        if unet is None:
            return False
        shape = BaseShape.from_config(unet.config)
        path = local_path(entry)
        if path is None:  # on the hub: judge by the family it was released for
            return FAMILY_SHAPES.get(entry.base) == shape
        if entry.kind == "controlnet":
            config = read_json(path / "config.json")
            return config is not None and BaseShape.from_config(config) == shape
        return lora_fits(unet, str(path))

    def choices(self, kind: str) -> list[tuple[str, str]]:
        """Dropdown (label, key) pairs: the one-step models, or the adapters that fit the loaded base
        (plus the active one, which the engine accepted even if its fit could not be judged).

        Multi-step teachers are left out rather than run with their steps: every tab of the app is a
        one-step loop (text as you type, the live stream, the sketch pad), where a teacher draws a
        noise smear, and at its steps with guidance it costs ~50 U-Net calls an image, which would stall
        the live loop it shares. Teachers are inputs for training; the operator may still load one
        from the command line."""
        entries = self.entries(kind)
        if kind == "pipeline":
            entries = [e for e in entries if e.steps == 1 or e.key == self.model_key]
        else:
            active = self.controlnet_key if kind == "controlnet" else self.lora_key
            entries = [e for e in entries if e.key == active or self.fits(e)]
        return [(e.label, e.key) for e in entries]

    def lookup(self, kind: str, key) -> Entry | None:
        """The offered entry of ``kind`` under ``key`` (a client's pick), or None: never a path."""
        return self._entries.get((kind, key)) if isinstance(key, str) else None

    def _refused(self, kind: str, key) -> str:
        return f"'{key}' is not one of the {kind}s this server offers; pick one from the list."

    # ---- using the engine --------------------------------------------------------------------
    @contextmanager
    def using(self):
        """The current engine, guaranteed not to be switched while the block runs."""
        with self._lock.shared():
            if self.engine is None:
                raise SDXSError("no model is loaded: pick one in the Models tab")
            yield self.engine

    # ---- switching ---------------------------------------------------------------------------
    def start(self, model: str, controlnet: str | None = None) -> str:
        """Load the first model at launch; an unavailable one falls back to the bundled miniature
        model (or the tiny test model when that is not installed), so the app always opens."""
        key = model if self.lookup("pipeline", model) else self.register(model)
        notice = self.load_model(key)
        if self.engine is None:
            fallback = self.default_model()
            notice = notice.rstrip(". ") + f". Falling back to **{fallback}**. " + self.load_model(fallback)
        cn_key = None
        if controlnet is not None:
            cn_key = controlnet if self.lookup("controlnet", controlnet) else self.register(controlnet, "controlnet")
            notice += " " + self.set_controlnet(cn_key)
        if self.model_key != key or self.controlnet_key != (cn_key or self.controlnet_key):
            # not what the operator asked for: say why on the page, for as long as this model is loaded
            self.notes[self.model_key] = " ".join(filter(None, [notice, self.notes.get(self.model_key)]))
        return notice

    def default_model(self) -> str:
        """The bundled miniature model when installed, else a tiny random one (noted as such)."""
        if (Path(PRESETS[DEFAULT_MODEL].source) / "model_index.json").is_file():
            return DEFAULT_MODEL
        model, _ = ensure_tiny_model(self.outputs)
        self.rescan()
        found = [e.key for e in self.entries("pipeline") if e.source == str(model)]
        key = found[0] if found else self.register(str(model))
        self.notes[key] = TINY_NOTE
        return key

    def load_model(self, key) -> str:
        entry = self.lookup("pipeline", key)
        if entry is None:
            return self._refused("model", key)
        if entry.steps > 1 and ("pipeline", entry.key) not in self._operator:
            return (f"**{entry.key}** is a multi-step teacher ({entry.steps} steps), not offered: the app runs one "
                    "step, where a teacher draws a noise smear. Teachers are inputs for training." + self._still_using())
        try:
            engine = load_engine(entry.source, device=self.device, dtype=self.dtype, graphs=self.graphs,
                                 backend=self.backend, precision=self.precision, cache_dir=self.cache_dir)
        except ModelUnavailableError as e:
            return f"**{entry.key}** is not available offline. {e}" + self._still_using()
        except (SDXSError, ValueError, OSError, RuntimeError) as e:  # RuntimeError: torch load failures
            return f"Could not load **{entry.key}**: {e}" + self._still_using()
        compiled = self._accelerate(engine)  # before the switch: users keep the old engine meanwhile
        with self._lock.exclusive():
            previous_cn, previous_lora = self.controlnet_key, self.lora_key
            self.engine, self.model_key, self.controlnet_key, self.lora_key = engine, entry.key, None, None
        if entry.steps > 1:  # the operator's own pick
            self.notes.setdefault(entry.key, f"**{entry.key}** is a multi-step teacher ({entry.steps} steps) run in "
                                             "one step here: expect a noise smear.")
        notice = (f"Loaded **{entry.key}** ({self.shape}, {engine.backend_label})."
                  + (" LoRA removed." if previous_lora else "") + _conversions(engine, 0) + compiled)
        fitting = [k for _, k in self.choices("controlnet")]
        entries = (self.lookup("controlnet", k) for k in fitting)
        local = sorted((e for e in entries if local_path(e)), key=control_rank)  # stable: alphabetical within a type
        pick = previous_cn if previous_cn in fitting else next((e.key for e in local), None)
        if pick is not None:
            notice += " " + self.set_controlnet(pick)
        return notice

    def _still_using(self) -> str:
        return f" Still using **{self.model_key}**." if self.engine is not None else ""

    def set_controlnet(self, key) -> str:
        """Attach a fitting ControlNet (``None`` or "none" detaches it)."""
        if key in (None, "none"):
            with self._lock.exclusive():
                if self.engine is not None:
                    self.engine.set_controlnet(None)
                self.controlnet_key = None
            return "ControlNet detached: live and sketch need one."
        entry = self.lookup("controlnet", key)
        if entry is None:
            return self._refused("ControlNet", key)
        if self.engine is None:
            return "Load a model before a ControlNet."
        converted = len(getattr(self.engine.backend, "events", []))
        try:
            controlnet = self._load_controlnet(entry.source)
            with self._lock.exclusive():
                self.engine.set_controlnet(controlnet)
                self.controlnet_key = entry.key
                compiled = self._accelerate(self.engine)
        except (SDXSError, ValueError, OSError, RuntimeError) as e:  # RuntimeError: torch load failures
            return f"ControlNet **{entry.key}** not attached: {e}"
        return f"ControlNet **{entry.key}** attached." + _conversions(self.engine, converted) + compiled

    def _accelerate(self, engine) -> str:
        """With ``compile`` set, compile ``engine``'s networks for its size and warm them up
        (``sdxs_core.gpu.accelerate``: on a GPU only; elsewhere it says why not): the notice's tail."""
        if self.compile is None:
            return ""
        return f" {accelerate(engine, mode=self.compile)}."

    def _load_controlnet(self, source: str):
        """A ControlNet switched to before is the same object again (unless its folder changed), so
        the engine's traced graphs for it are reused instead of traced anew."""
        path = Path(source)
        key = (source, path.stat().st_mtime_ns if path.exists() else None, self.model_key)
        if key in self._controlnets:
            self._controlnets.move_to_end(key)
            return self._controlnets[key]
        controlnet = self._controlnets[key] = load_controlnet(source, self.device, self.dtype)
        while len(self._controlnets) > CONTROLNETS_KEPT:
            self._controlnets.popitem(last=False)
        return controlnet

    def set_lora(self, key, scale: float = 1.0) -> str:
        """Make ``key`` the one active LoRA (``None`` or "none" removes it)."""
        entry = None if key in (None, "none") else self.lookup("lora", key)
        if key not in (None, "none") and entry is None:
            return self._refused("LoRA", key)
        if self.engine is None:
            return "Load a model before a LoRA."
        converted = len(getattr(self.engine.backend, "events", []))
        try:
            with self._lock.exclusive():
                # the new LoRA loads beside the old one and replaces it only once it is in, so a
                # failed switch leaves the previous LoRA active
                old = self._adapter() if self.lora_key is not None else None
                if entry is not None:
                    new = f"{LORA_NAME}-{next(self._adapters)}"
                    self.engine.load_lora(entry.source, scale=scale, adapter_name=new)
                if old is not None:
                    self.engine.unload_lora(old)
                self.lora_key = entry.key if entry is not None else None
                if entry is not None:
                    self.lora_scale = float(scale)
        except (SDXSError, ValueError, OSError, RuntimeError) as e:  # RuntimeError: PEFT/torch shape mismatches
            kept = f" Still using **{self.lora_key}**." if self.lora_key else ""
            return f"LoRA **{entry.key}** not loaded: {e}{kept}"
        return (f"LoRA **{entry.key}** at scale {scale:g}." if entry else "No LoRA.") + _conversions(self.engine,
                                                                                                     converted)

    def _adapter(self) -> str:
        """The engine's name for the active LoRA (the one hub-made adapter it holds)."""
        return next(n for n in self.engine.loras if n.startswith(f"{LORA_NAME}-"))

    def set_lora_scale(self, scale: float) -> None:
        with self._lock.exclusive():
            self.lora_scale = float(scale)
            if self.lora_key is not None:
                self.engine.set_lora_scale(self._adapter(), self.lora_scale)

    def status(self) -> str:
        """One Markdown paragraph: what is loaded, on what, and any standing notice."""
        if self.engine is None:
            return "No model loaded."
        text = (f"**Model** {self.model_key} ({self.shape}) · **ControlNet** {self.controlnet_key or 'none'} · "
                f"**LoRA** {self.lora_key or 'none'} · {self.device.type} {self.engine.backend_label}")
        note = self.notes.get(self.model_key)
        return f"{text}\n\n⚠️ {note}" if note else text


def _conversions(engine, since: int) -> str:
    """What the OpenVINO backend spent converting (or reading its cache) since event ``since``: a LoRA
    change converts the U-Net again, and the user should see what that cost."""
    events = getattr(engine.backend, "events", [])[since:]
    if not events:
        return ""
    converted = [e for e in events if not e.cached]
    total = sum(e.seconds for e in events)
    return (f" OpenVINO: {', '.join(e.network for e in converted)} converted" if converted else
            " OpenVINO: read from its cache") + f" in {total:.1f} s."


# ---- generation requests ------------------------------------------------------------------------
@dataclass(frozen=True)
class TextRequest:
    prompt: str
    style: str = "none"
    seed: int = 0
    randomize: bool = False
    num_images: int = 1


def text_to_image(hub: ModelHub, request: TextRequest):
    """One-step text-to-image at the model's native size; returns the engine's ``GenerationOutput``."""
    if request.style not in STYLES:
        raise ValueError(f"unknown style {request.style!r}; choose one of {sorted(STYLES)}")
    if request.style not in hub.styles():  # words its text encoder never learnt: a style in name only
        raise ValueError(f"style {request.style!r} means nothing to the loaded model; choose one of {list(hub.styles())}")
    check("Images", request.num_images)
    seed = secrets.randbelow(2**31) if request.randomize else request.seed
    prompt = request.prompt.strip() + STYLES[request.style]
    with hub.using() as engine:
        return engine.generate(prompt, seed=seed, num_images=request.num_images)
