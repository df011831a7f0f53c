"""The one-step engine: the only place in the product that runs a diffusion model for inference.

One step at the last timestep with guidance 0 is what SDXS was trained for. The engine gives the
same images as diffusers' ``StableDiffusionPipeline(num_inference_steps=1, guidance_scale=0)`` for
the same seeds, while doing less per call: prompt embeddings are cached, the scheduler's single
step is precomputed as ``latents = a * x + b * model_output``, and there is no CFG batch, safety
checker or per-call scheduler set-up. Teachers (many steps, CFG) run through the same object.
"""

import copy
import inspect
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .devices import synchronize
from .errors import RANGES, InvalidInputError, NonFiniteOutputError, PromptTruncatedWarning, check
from .fits import check_controlnet_fits
from .graphs import GraphCache
from .images import ImageLike, to_rgb_image
from .sources import resolve_model_dir

MAX_SEED = int(RANGES["Seed"].high)
FLAT_RANGE = 2 / 255  # an image whose pixels all lie within this is one flat colour (see _flat_warnings)


@dataclass
class StageTimings:
    text_ms: float = 0.0
    control_ms: float = 0.0  # ControlNet forward
    unet_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class GenerationOutput:
    images: list[Image.Image] | np.ndarray | torch.Tensor
    seeds: list[int]
    timings: StageTimings = field(default_factory=StageTimings)
    warnings: list[str] = field(default_factory=list)  # e.g. an image that came out one flat colour


class _Stopwatch:
    """Adds the wall time of a ``with`` block to one field of a ``StageTimings``."""

    def __init__(self, timings: StageTimings, device: torch.device):
        self.timings, self.device = timings, device

    def __call__(self, stage: str):
        self.stage = stage
        return self

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        synchronize(self.device)
        setattr(self.timings, self.stage, getattr(self.timings, self.stage) + (time.perf_counter() - self.t0) * 1e3)


def _one_step_coefficients(scheduler) -> tuple[torch.Tensor, float, float, float, float] | None:
    """Probe the scheduler's single step as affine maps: ``model_in = c_in * x`` and
    ``x0 = a * x + b * model_output``. Returns None when the step is not affine (clipping,
    thresholding), in which case the engine calls ``scheduler.step`` itself."""
    cfg = scheduler.config
    if cfg.get("clip_sample", False) or cfg.get("thresholding", False):
        return None
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(1)
    t = sched.timesteps[:1].clone()
    one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)

    def probe(model_output, sample):
        s = copy.deepcopy(sched)  # fresh step index for each probe
        c_in = float(s.scale_model_input(one, t[0]).flatten()[0])
        return c_in, float(s.step(model_output, t[0], sample, return_dict=False)[0].flatten()[0])

    c_in, a = probe(zero, one)
    _, b = probe(one, zero)
    return t, float(sched.init_noise_sigma), c_in, a, b


def make_backend(backend, device: torch.device, dtype: torch.dtype, precision: str | None = "auto",
                 cache_dir=None, calibration_prompts: list[str] | None = None):
    """None for torch, else an ``OpenVINOBackend``. ``backend`` is "torch", "openvino", None (torch) or a
    ready backend object. OpenVINO converts fp32 torch networks and runs them on the CPU; its own
    ``precision`` (bf16, int8, ...) replaces torch's dtype, so other devices or dtypes are refused."""
    if backend is None or backend == "torch":
        return None
    if not isinstance(backend, str):
        return backend
    if backend != "openvino":
        raise ValueError(f"backend={backend!r}: choose one of auto, torch, openvino")
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(f"backend='openvino' runs on the CPU from fp32 weights, but this engine is on {device} in "
                         f"{str(dtype).removeprefix('torch.')}: use dtype fp32 with precision='bf16' (or int8, "
                         f"mixed) for lower precision, or backend='torch'")
    from .openvino_backend import OpenVINOBackend

    return OpenVINOBackend(precision, cache_dir, calibration_prompts)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class OneStepEngine:
    """Text-to-image and ControlNet image-to-image in one U-Net evaluation.

    Thread-safe for concurrent ``generate`` calls (the app serves several sessions); LoRA and
    ControlNet changes are global to the engine.
    """

    max_steps = int(RANGES["Steps"].high)  # ``load_engine`` lowers it for a distilled one-step model

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler, controlnet=None,
                 name: str = "model", prompt_cache_size: int = 128, graphs: bool = False,
                 backend=None):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.scheduler, self.name = scheduler, name
        # diffusers' ModelMixin.device/.dtype walk every module (~1.5 ms each): read them once
        self._device, self._dtype = unet.device, unet.dtype
        self.controlnet = None
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.control_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor,
                                                   do_convert_rgb=True, do_normalize=False)
        self._one_step = _one_step_coefficients(scheduler)
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        self._noise_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.RLock()  # re-entered when a LoRA change re-calibrates an int8 backend
        self._loras: dict[str, float] = {}
        self._lora_sources: dict[str, tuple] = {}  # name -> (resolved path, mtime): which weights it holds
        self._weights_key: tuple = ()  # the U-Net's LoRA state, part of a traced graph's cache key
        # frozen graphs for the one-step path (sdxs_core.graphs): only for fixed weights, never
        # for a network a trainer is still updating
        self.graphs = GraphCache() if graphs else None
        # where the one-step U-Net and decoder run: None is torch (eager, or traced with ``graphs``), or
        # an ``OpenVINOBackend`` (see ``make_backend``); multi-step teachers always run in torch
        self.backend = make_backend(backend, self._device, self._dtype)
        for module in (text_encoder, unet, vae):
            module.eval().requires_grad_(False)
        if controlnet is not None:
            self.set_controlnet(controlnet)

    # ---- properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def default_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be a multiple of this (VAE factor x U-Net downsamplings)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def backend_label(self) -> str:
        """What runs the one-step U-Net and decoder, e.g. "torch fp32" or "openvino bf16"."""
        if self.backend is not None:
            return self.backend.label
        names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
        return f"torch {names.get(self.dtype, str(self.dtype).removeprefix('torch.'))}"

    @property
    def loras(self) -> dict[str, float]:
        return dict(self._loras)

    # ---- components ---------------------------------------------------------------------------
    def set_controlnet(self, controlnet) -> None:
        if controlnet is not None:
            check_controlnet_fits(controlnet, self.unet)
            controlnet.eval().requires_grad_(False)
        previous, self.controlnet = self.controlnet, controlnet
        try:
            self._networks_changed(controlnet=True)
        except Exception:  # a ControlNet the backend cannot convert: keep the one that worked
            self.controlnet = previous
            self._networks_changed(controlnet=True)
            raise

    def load_lora(self, source, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Add a LoRA (diffusers / PEFT / kohya file, folder, preset or hub id) and activate it."""
        from pathlib import Path

        from .lora import apply_lora

        scale = check("LoRA scale", scale)
        path = Path(source) if Path(str(source)).exists() else resolve_model_dir(source, kind="lora")[0]
        with self._lock:
            name = adapter_name or f"lora_{len(self._loras)}"
            if name in self._loras:
                raise ValueError(f"a LoRA named {name!r} is already loaded; unload it first")
            apply_lora(self.unet, path, name)
            self.unet.to(self.device, self.dtype)
            self._lora_sources[name] = (str(path.resolve()), path.stat().st_mtime_ns)
            self._loras[name] = float(scale)
            self._apply_lora_scales()
        return name

    def set_lora_scale(self, name: str, scale: float) -> None:
        scale = check("LoRA scale", scale)
        with self._lock:
            if name not in self._loras:
                raise KeyError(f"no LoRA named {name!r}; loaded: {sorted(self._loras)}")
            self._loras[name] = float(scale)
            self._apply_lora_scales()

    def unload_lora(self, name: str | None = None) -> None:
        with self._lock:
            names = list(self._loras) if name is None else [name]
            for n in names:
                if n not in self._loras:
                    raise KeyError(f"no LoRA named {n!r}; loaded: {sorted(self._loras)}")
                self.unet.delete_adapters(n)
                del self._loras[n]
                self._lora_sources.pop(n, None)
            self._apply_lora_scales()

    def _apply_lora_scales(self) -> None:
        if self._loras:
            self.unet.set_adapters(list(self._loras), list(self._loras.values()))
        self._networks_changed(unet=True)

    def _networks_changed(self, unet: bool = False, controlnet: bool = False) -> None:
        """Traced graphs hold the weights they were traced with: they are keyed by the LoRA state, so
        a state seen before reuses its graph (a ControlNet's are keyed by the network itself).
        Converted networks hold the old weights: after a change (a LoRA, a ControlNet) the OpenVINO
        backend converts them again now (or reads them from its cache), so the next image does not
        wait and ``backend.events`` says what the change cost."""
        # by file and scale, not adapter name: the hub loads each switch under a fresh name
        self._weights_key = tuple(sorted((self._lora_sources.get(n), s) for n, s in self._loras.items()))
        if self.backend is not None and unet:
            self.backend.networks_changed()
            self.backend.prepare(self)
        elif self.backend is not None and controlnet:
            self.backend.networks_changed(("controlnet",))
            if self.controlnet is not None:
                self.backend.prepare_controlnet(self)

    # ---- steps ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """``[N, L, D]`` text embeddings; each distinct prompt is encoded once and cached. The batch is
        assembled from what this call found or encoded, so a batch with more distinct prompts than the
        cache holds (or a concurrent call evicting entries) never needs the cache to keep them."""
        unique, found = list(dict.fromkeys(prompts)), {}
        with self._lock:
            for p in unique:
                if p in self._prompt_cache:
                    self._prompt_cache.move_to_end(p)
                    found[p] = self._prompt_cache[p]
        missing = [p for p in unique if p not in found]
        if missing:
            limit = self.tokenizer.model_max_length
            ids = self.tokenizer(missing, padding="max_length", max_length=limit, truncation=True,
                                 return_tensors="pt").input_ids
            for p in missing:
                n_tokens = len(self.tokenizer(p, truncation=False).input_ids)
                if n_tokens > limit:
                    warnings.warn(f"prompt has {n_tokens} tokens; the text encoder reads {limit}, so it was "
                                  f"truncated: {p[:60]!r}...", PromptTruncatedWarning, stacklevel=3)
            use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
            mask = (ids != self.tokenizer.pad_token_id).long().to(self.device) if use_mask else None
            embeds = self.text_encoder(ids.to(self.device), attention_mask=mask)[0].to(self.dtype)
            found.update(zip(missing, embeds))
            with self._lock:
                for p, e in zip(missing, embeds):
                    self._prompt_cache[p] = e
                while len(self._prompt_cache) > self._prompt_cache_size:
                    self._prompt_cache.popitem(last=False)
        return torch.stack([found[p] for p in prompts])

    def make_noise(self, seeds: list[int], height: int, width: int,
                   generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """Initial latents, one CPU generator per seed (so image i does not depend on the batch)."""
        shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        gens = generators or [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return torch.cat([randn_tensor(shape, generator=g, device=self.device, dtype=self.dtype) for g in gens])

    def _fixed_noise(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        key = (tuple(seeds), height, width, self.dtype)
        with self._lock:
            noise = self._noise_cache.get(key)
        if noise is None:
            noise = self.make_noise(seeds, height, width)
            with self._lock:
                self._noise_cache[key] = noise
                while len(self._noise_cache) > 16:
                    self._noise_cache.popitem(last=False)
        return noise

    def prepare_control(self, image: ImageLike | list[ImageLike], batch: int, height: int, width: int) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1]: any mode or size in, converted to RGB and resized."""
        images = image if isinstance(image, list) else [image]
        if len(images) not in (1, batch):
            raise ValueError(f"got {len(images)} control images for a batch of {batch}; pass one or {batch}")
        pil = [to_rgb_image(im) for im in images]
        cond = self.control_processor.preprocess(pil, height=height, width=width).to(dtype=torch.float32)
        if cond.shape[0] == 1:
            cond = cond.repeat_interleave(batch, dim=0)
        if self.device.type == "cuda":  # from page-locked memory the copy need not stall the host
            return cond.pin_memory().to(self.device, self.dtype, non_blocking=True)
        return cond.to(self.device, self.dtype)

    def _denoise(self, x, t, embeds, control, control_scale, timings, graphs=None, backend=None):
        """One network evaluation: ControlNet residuals (if any) then the U-Net, traced when
        ``graphs`` is given, in ``backend`` when that is given."""
        clock = _Stopwatch(timings, self.device)
        down = mid = None
        if control is not None:
            with clock("control_ms"):
                if backend is not None:
                    down, mid = backend.controlnet(self, x, t, embeds, control, control_scale)
                elif graphs is not None:
                    down, mid = graphs.controlnet(self.controlnet, x, t, embeds, control, control_scale)
                else:
                    down, mid = self.controlnet(x, t, encoder_hidden_states=embeds, controlnet_cond=control,
                                                conditioning_scale=control_scale, return_dict=False)
        with clock("unet_ms"):
            if backend is not None:
                return backend.unet(self, x, t, embeds, down, mid)
            if graphs is not None:
                return graphs.unet(self.unet, x, t, embeds, down, mid, state=self._weights_key)
            return self.unet(x, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid, return_dict=False)[0]

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, graphs=None, backend=None) -> torch.Tensor:
        """Latents -> images in [0, 1], ``[N, 3, H, W]`` float32."""
        vae_dtype = next(self.vae.parameters()).dtype
        latents = latents.to(vae_dtype) / self.vae.config.scaling_factor
        if backend is not None:
            image = backend.decode(self, latents)
        elif graphs is not None:
            image = graphs.decode(self.vae, latents)
        else:
            image = self.vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # ---- the call -------------------------------------------------------------------------------
    def check_inputs(self, prompts, seeds, height, width, control_image, num_inference_steps):
        if any(not isinstance(p, str) for p in prompts):
            raise TypeError("prompt must be a string or a list of strings")
        for s in seeds:
            check("Seed", s)
        m = self.size_multiple
        for side, v in (("height", height), ("width", width)):
            if not _is_int(v) or v < m or v % m:
                finite = isinstance(v, (int, float)) and np.isfinite(v)
                near = max(m, round(v / m) * m) if finite else self.default_size
                raise InvalidInputError(side.capitalize(), f"{side}={v} is not a positive multiple of {m} for "
                                        f"this model; try {near}")
            check(side.capitalize(), int(v))
        if control_image is not None and self.controlnet is None:
            raise ValueError("a control image was given but no ControlNet is loaded")
        if self.max_steps < RANGES["Steps"].high and num_inference_steps > self.max_steps:
            raise InvalidInputError("Steps", f"at most {self.max_steps} on the one-step model {self.name} "
                                    f"(more steps only blur it), got {num_inference_steps}")
        check("Steps", num_inference_steps)

    def check_init_latents(self, init_latents, strength, n, height, width, steps, cfg):
        shape = (n, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if tuple(init_latents.shape) != shape:
            raise ValueError(f"init_latents has shape {tuple(init_latents.shape)}; this call needs {shape}")
        if steps == 1 and not cfg:
            raise ValueError("init_latents (SDEdit) needs the multi-step sampler: num_inference_steps > 1")
        if not 0 < strength <= 1 or int(steps * strength) < 1:
            raise ValueError(f"strength={strength} must be in (0, 1] and leave at least one of the "
                             f"{steps} steps (strength >= {1 / steps:.3g})")

    @torch.inference_mode()
    def generate(self, prompt: str | list[str], *, seed: int | list[int] | None = None,
                 num_images: int | None = None, height: int | None = None, width: int | None = None,
                 control_image: ImageLike | list[ImageLike] | None = None, control_scale: float = 1.0,
                 noise: torch.Tensor | None = None, fixed_noise: bool = False,
                 num_inference_steps: int = 1, guidance_scale: float = 0.0, negative_prompt: str = "",
                 init_latents: torch.Tensor | None = None, strength: float = 1.0,
                 output_type: str = "pil") -> GenerationOutput:
        """Generate images. ``seed`` may be one int (image i gets ``seed + i``) or one per image;
        ``noise`` overrides seeds with explicit initial latents; ``fixed_noise`` reuses cached
        latents for the same seeds (the live loop). Without ``control_image`` an attached ControlNet
        is skipped (plain text-to-image). Many steps / CFG are for teachers.

        ``init_latents`` + ``strength`` (multi-step only) is SDEdit: the sampler runs only its last
        ``strength`` share of steps, from ``init_latents`` noised to that level with the seeds' (or
        ``noise``'s) noise, so the image keeps their layout; LoRA-SSD restyles plain pairs with it."""
        timings = StageTimings()
        clock = _Stopwatch(timings, self.device)
        start = time.perf_counter()

        # 1. check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_images is not None:
            num_images = check("Images", num_images)
        n = num_images or (len(seed) if isinstance(seed, list) else len(prompts))
        if len(prompts) == 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} images: pass one prompt or one per image")
        if seed is None:
            seed = secrets.randbelow(2**31)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i if _is_int(seed) else seed for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} images: pass one seed or one per image")
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_inputs(prompts, seeds, height, width, control_image, num_inference_steps)
        seeds = [int(s) for s in seeds]
        guidance_scale = check("Guidance", guidance_scale)
        control_scale = check("Control strength", control_scale)
        strength = check("Strength", strength)
        cfg = guidance_scale > 1.0
        if init_latents is not None:
            self.check_init_latents(init_latents, strength, n, height, width, num_inference_steps, cfg)
        elif strength != 1.0:
            raise ValueError(f"strength={strength} is SDEdit's: pass init_latents with it")

        # 2. encode prompt
        with clock("text_ms"):
            embeds = self.encode_prompt(prompts)
        if cfg:
            embeds = torch.cat([self.encode_prompt([negative_prompt] * n), embeds])

        # 3. prepare latents and control
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # also drive stochastic samplers
        if noise is not None:
            latents = noise.to(self.device, self.dtype)
        elif fixed_noise:
            latents = self._fixed_noise(seeds, height, width)
        else:
            latents = self.make_noise(seeds, height, width, generators)
        control = None
        if control_image is not None:
            control = self.prepare_control(control_image, n, height, width)
            control = torch.cat([control] * 2) if cfg else control

        # 4. denoise
        one_step = num_inference_steps == 1 and not cfg and self._one_step is not None
        graphs = self.graphs if one_step else None  # multi-step teachers stay eager
        backend = self.backend if one_step else None
        if one_step:
            t, init_sigma, c_in, a, b = self._one_step
            x = latents * init_sigma
            out = self._denoise(x * c_in, t.to(self.device), embeds, control, control_scale, timings, graphs,
                                backend)
            latents = a * x + b * out
        else:
            latents = self._sample(latents, embeds, control, control_scale, num_inference_steps,
                                   guidance_scale, cfg, generators, timings, init_latents, strength)

        # 5. decode
        self._check_finite(latents, "latents")
        if output_type == "latent":
            images = latents
        else:
            with clock("decode_ms"):
                images = self.decode(latents, graphs, backend)
            self._check_finite(images, "decoded image")
            flat = self._flat_warnings(images, seeds)
            images = self._postprocess(images, output_type)
        timings.total_ms = (time.perf_counter() - start) * 1e3
        return GenerationOutput(images=images, seeds=seeds, timings=timings,
                                warnings=flat if output_type != "latent" else [])

    def _sample(self, latents, embeds, control, control_scale, steps, guidance_scale, cfg, generators, timings,
                init_latents=None, strength=1.0):
        """The general multi-step loop with the model's own scheduler (teachers, baselines); from
        ``init_latents`` it starts ``strength`` of the way (diffusers' img2img indexing)."""
        scheduler = copy.deepcopy(self.scheduler)  # schedulers are stateful; keep calls independent
        scheduler.set_timesteps(steps, device=self.device)
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        timesteps = scheduler.timesteps
        if init_latents is None:
            latents = latents * scheduler.init_noise_sigma
        else:
            skip = (steps - min(int(steps * strength), steps)) * scheduler.order
            timesteps = timesteps[skip:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(skip)
            start = timesteps[:1].repeat(len(latents))
            latents = scheduler.add_noise(init_latents.to(self.device, self.dtype), latents, start)
        for t in timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = scheduler.scale_model_input(x, t)
            out = self._denoise(x, t, embeds, control, control_scale, timings)
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(out, t, latents, **step_kwargs, return_dict=False)[0]
        return latents

    def _check_finite(self, x: torch.Tensor, what: str) -> None:
        """NaN or inf decode to a black image that looks like a result: refuse it instead."""
        if not bool(torch.isfinite(x).all()):
            loras = f" (LoRAs: {', '.join(f'{k} at {v:g}' for k, v in self._loras.items())})" if self._loras else ""
            raise NonFiniteOutputError(f"{self.name} produced NaN/inf {what}{loras}: no image returned. A LoRA or "
                                       f"ControlNet with broken weights, or fp16 overflow, are the usual causes")

    def _flat_warnings(self, images: torch.Tensor, seeds: list[int]) -> list[str]:
        """A finite image can still be all black (a saturated LoRA, a ControlNet at an extreme
        strength): no model makes a one-colour picture on purpose, so say so rather than let it pass
        as a result. Not an error: the image is returned, and the caller shows the warning."""
        spread = (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).tolist()
        flat = [i for i, s in enumerate(spread) if s < FLAT_RANGE]
        if not flat:
            return []
        loras = f" with LoRAs {', '.join(f'{k} at {v:g}' for k, v in self._loras.items())}" if self._loras else ""
        which = ", ".join(f"seed {seeds[i]}" for i in flat)
        return [f"{len(flat)} of {len(spread)} images came out one flat colour ({which}){loras}: a LoRA, ControlNet "
                "or strength that saturates the model is the usual cause"]

    @staticmethod
    def _postprocess(images: torch.Tensor, output_type: str):
        if output_type == "pt":
            return images
        arr = images.permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, 3]
        if output_type == "np":
            return arr
        if output_type == "pil":
            return [Image.fromarray(a) for a in (arr * 255).round().astype(np.uint8)]
        raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
