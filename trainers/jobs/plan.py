"""What a job runs: a request (the Train tab's form, the CLI's flags, an API call) resolved against a
preset into stages, each one existing method with a complete, validated config.

    style LoRA from a LoRA     lora_ssd
    style LoRA from images     lora_teacher (a LoRA of the multi-step teacher) -> lora_ssd
    ControlNet                 [controlnet_teacher] -> [controlnet_kd] -> controlnet_ssd

Presets are YAML files in ``trainers/configs/jobs/``: the models they train for and, per stage, a
method config to start from plus the options to change (``set``). A request may override any stage
option (``overrides``); everything is validated with the method configs' own error messages before a
job is queued, so a bad option never reaches a worker.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from sdxs_core.control import CONTROL_NAMES, CONTROL_TYPES, control_kind
from trainers.core.image_folder import image_files
from trainers.methods import method_class

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "trainers" / "configs"
PRESETS = CONFIGS / "jobs"
KINDS = ("lora", "controlnet")
DEVICES = ("auto", "cpu", "cuda")
MIN_STYLE_IMAGES = 8
TRAIN_TEACHER = "train"  # teacher_controlnet value: train one in a first stage
LORA_FILE = "pytorch_lora_weights.safetensors"


class JobError(ValueError):
    """A request that cannot become a job; the message lists every problem, each naming its field."""


@dataclass
class JobRequest:
    kind: str  # lora | controlnet
    name: str = ""
    preset: str = "quick"
    teacher: str = ""  # the multi-step teacher pipeline folder ("" = the preset's)
    student: str = ""  # the one-step student pipeline folder the result is for ("" = the preset's)
    # style LoRA: an existing LoRA of the multi-step teacher, or a folder of style images
    style_lora: str = ""
    images: str = ""  # style images (lora), or ControlNet images ("" = the preset's data: the miniature world)
    trigger: str = ""
    caption_template: str = ""  # "" = the preset's
    caption_with: str = ""  # template | classifier; "" = the preset's
    # ControlNet
    control_type: str = "canny"
    teacher_controlnet: str = ""  # a ControlNet of the teacher; "" = the preset's for this type; "train"
    # where and how
    device: str = "auto"
    num_processes: int = 1
    overrides: dict = field(default_factory=dict)  # stage -> {option: value}

    def __post_init__(self):
        if isinstance(self.control_type, str):  # an alias (edges) is its type from here on: names, presets, plans
            self.control_type = CONTROL_NAMES.get(self.control_type, self.control_type)

    @classmethod
    def from_dict(cls, data: dict) -> "JobRequest":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"unknown request field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class Stage:
    name: str  # the method it runs: a key of trainers.methods.METHODS
    config: dict  # complete options of the method's config class

    @property
    def method_cls(self):
        return method_class(self.name)

    def build_config(self):
        from trainers.core.config import load_config

        return load_config(self.method_cls.config_cls, None, self.config)


@dataclass
class Plan:
    request: JobRequest
    preset: str
    stages: list[Stage]
    artefact: str  # "lora" (a LoRA file) | "controlnet" (a ControlNetModel folder), from the last stage's final/

    def to_dict(self) -> dict:
        return {"request": dataclasses.asdict(self.request), "preset": self.preset,
                "stages": [{"name": s.name, "config": s.config} for s in self.stages], "artefact": self.artefact}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(JobRequest(**data["request"]), data["preset"], [Stage(**s) for s in data["stages"]], data["artefact"])


# ---- presets ------------------------------------------------------------------------------------------
def preset_names(presets: Path = PRESETS) -> list[str]:
    return sorted(p.stem for p in Path(presets).glob("*.yaml"))


def load_preset(name: str, presets: Path = PRESETS) -> dict:
    import yaml

    if name not in preset_names(presets):
        raise JobError(f"preset={name!r} is not one of {preset_names(presets)}")
    return yaml.safe_load((Path(presets) / f"{name}.yaml").read_text())


def _path(value: str) -> str:
    """A preset's path: relative ones are relative to the repository."""
    return str(ROOT / value) if value and not Path(value).is_absolute() else value


def teacher_unet(preset: str, presets: Path = PRESETS):
    """The preset teacher's U-Net built on the meta device (its layout, no weights): enough to tell
    which LoRAs and ControlNets fit it. None when the teacher is not on this machine."""
    import torch
    from diffusers import UNet2DConditionModel

    config = Path(_path(load_preset(preset, presets).get("models", {}).get("teacher", ""))) / "unet" / "config.json"
    if not config.is_file():
        return None
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(json.loads(config.read_text()))


# ---- resolving a request -------------------------------------------------------------------------------
def _request_errors(r: JobRequest, preset: dict) -> list[str]:
    e = []
    if r.kind not in KINDS:
        return [f"kind={r.kind!r} must be one of {KINDS}"]
    if r.device not in DEVICES:
        e.append(f"device={r.device!r} must be one of {DEVICES}")
    if not isinstance(r.num_processes, int) or r.num_processes < 1:
        e.append(f"num_processes={r.num_processes!r} must be an integer >= 1")
    if not isinstance(r.overrides, dict) or not all(isinstance(v, dict) for v in r.overrides.values()):
        e.append("overrides must map a stage name to {option: value}")
    if r.kind == "lora":
        if bool(r.style_lora) == bool(r.images):
            e.append("give exactly one of style_lora (a LoRA of the multi-step base) or images (a folder of style images)")
        elif r.style_lora and not Path(r.style_lora).exists():
            e.append(f"style_lora={r.style_lora!r} does not exist")
        elif r.images:
            if not Path(r.images).is_dir():
                e.append(f"images={r.images!r} is not a folder")
            elif (n := len(image_files(r.images))) < MIN_STYLE_IMAGES:
                e.append(f"images: {n} image(s) in {r.images!r}; a style needs at least {MIN_STYLE_IMAGES}")
    else:
        try:
            control_kind(r.control_type, "control_type", CONTROL_TYPES)
        except ValueError as err:
            e.append(str(err))
        if r.images and not Path(r.images).is_dir():
            e.append(f"images={r.images!r} is not a folder")
        if r.teacher_controlnet not in ("", TRAIN_TEACHER) and not (Path(r.teacher_controlnet) / "config.json").is_file():
            e.append(f"teacher_controlnet={r.teacher_controlnet!r} is not a ControlNet folder (no config.json)")
    if r.caption_with not in ("", "template", "classifier"):
        e.append(f"caption_with={r.caption_with!r} must be template or classifier")
    return e


def _stage_names(r: JobRequest, preset: dict, teacher_cn: str) -> list[str]:
    available = preset.get("stages", {})
    if r.kind == "lora":
        names = ["lora_teacher", "lora_ssd"] if r.images else ["lora_ssd"]
    else:
        names = [] if teacher_cn else ["controlnet_teacher"]
        names += [s for s in ("controlnet_kd", "controlnet_ssd") if s in available]
    missing = [n for n in names if n not in available]
    if missing:
        raise JobError(f"preset {r.preset!r} has no settings for stage(s) {missing}")
    return names


def _captions(r: JobRequest, settings: dict) -> dict:
    """Caption options of a folder of images: the request's, else the preset's way (``caption_with``);
    the template follows from it unless given: the classifier's scene caption and / or the trigger word."""
    with_ = r.caption_with or settings.get("set", {}).get("caption_with", "template")
    template = r.caption_template
    if not template:
        scene = ["{caption}"] if with_ == "classifier" else []
        template = ", ".join(scene + (["{trigger}"] if r.trigger or not scene else []))
    return {"trigger": r.trigger, "caption_with": with_, "caption_template": template}


def pair_cache_name(config: dict) -> str:
    """One shared cache file per set of teacher pairs: jobs with the same teacher, prompts and sampler
    reuse each other's pairs instead of sampling them again."""
    keys = ("teacher", "prompts", "num_prompts", "num_pairs", "teacher_steps", "teacher_guidance", "resolution", "seed")
    spec = {k: config.get(k) for k in keys}
    if config.get("teacher_takes_lora") and config.get("style_lora"):
        spec.update(style_lora=str(Path(config["style_lora"]).resolve()), scale=config.get("style_lora_scale"))
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"pairs-{digest}.safetensors"


def plan_job(request: JobRequest, job_dir: Path, cache_dir: Path, presets: Path = PRESETS) -> Plan:
    """The stages of ``request`` with complete configs whose run folders live in ``job_dir``; raises
    ``JobError`` listing every problem (the request's and each stage config's own errors)."""
    from trainers.core.config import load_config

    preset = load_preset(request.preset, presets)
    errors = _request_errors(request, preset)
    if errors:
        raise JobError("\n".join(errors))
    models = {k: v for k, v in preset.get("models", {}).items()}
    teacher = request.teacher or _path(models.get("teacher", ""))
    student = request.student or _path(models.get("student", ""))
    teacher_cn = request.teacher_controlnet
    if request.kind == "controlnet" and not teacher_cn:
        teacher_cn = _path(models.get("teacher_controlnet", {}).get(request.control_type, ""))
    if teacher_cn == TRAIN_TEACHER:
        teacher_cn = ""
    names = _stage_names(request, preset, teacher_cn)
    unknown = sorted(set(request.overrides) - set(names))
    if unknown:
        raise JobError(f"overrides name stage(s) {unknown} this job does not run; its stages: {names}")

    stages, previous = [], {}
    for name in names:
        settings = preset["stages"][name]
        base = settings.get("config")
        wiring = {"teacher": teacher, "run_dir": str(job_dir / name), "device": request.device, "resume": "latest"}
        chained = set()  # options that point at an earlier stage's output, which does not exist yet
        if name == "lora_teacher":
            wiring.update(images=request.images, **_captions(request, settings))
        elif name == "lora_ssd":
            wiring.update(student=student, style_lora=request.style_lora or previous["lora_teacher"] + "/" + LORA_FILE)
            chained |= {"style_lora"} if not request.style_lora else set()
        elif name == "controlnet_teacher":
            wiring.update(control_type=request.control_type, images=request.images)
            if request.images:
                wiring.update(_captions(request, settings))
        else:
            wiring.update(student=student, control_type=request.control_type,
                          teacher_controlnet=teacher_cn or previous["controlnet_teacher"],
                          stage="kd" if name == "controlnet_kd" else "ssd")
            chained |= {"teacher_controlnet"} if not teacher_cn else set()
            if name == "controlnet_ssd":  # from the KD stage's ControlNet, or a new one
                wiring["controlnet"] = previous.get("controlnet_kd", "")
                chained |= {"controlnet"} if "controlnet_kd" in previous else set()
        cls = Stage(name, {}).method_cls.config_cls
        known = {f.name for f in dataclasses.fields(cls)}
        options = {**settings.get("set", {}), **{k: v for k, v in wiring.items() if k in known},
                   **request.overrides.get(name, {})}
        try:
            config = load_config(cls, str(CONFIGS / base) if base else None, options)
        except (ValueError, TypeError) as e:
            raise JobError(f"{name}: {e}") from None
        if "pair_cache" in known:
            config.pair_cache = str(cache_dir / pair_cache_name(config.to_dict()))
        errors += [f"{name}: {msg}" for msg in config.errors() if not any(msg.startswith(f"{k}=") for k in chained)]
        stages.append(Stage(name, {k: v for k, v in config.to_dict().items() if k != "method"}))
        previous[name] = str(job_dir / name / "final")
    if errors:
        raise JobError("\n".join(errors))
    return Plan(request, request.preset, stages, request.kind)
