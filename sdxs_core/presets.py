"""Named models: the released SDXS weights on the Hugging Face Hub, and the bundled miniature model."""

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # hub repo id, or a path under assets/
    kind: str  # "pipeline" | "controlnet" | "lora"
    base: str  # the family a ControlNet/LoRA fits, or the pipeline's own family
    description: str
    control_type: str | None = None  # for ControlNets: which extractor feeds them

    @property
    def bundled(self) -> bool:
        return not _is_hub_id(self.source)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("sdxs-512-0.9", "IDKiro/sdxs-512-0.9", "pipeline", "sd2.1",
           "One-step text-to-image, 512x512; distilled from SD-Turbo / SD2.1-base."),
    Preset("sdxs-512-dreamshaper", "IDKiro/sdxs-512-dreamshaper", "pipeline", "sd1.5",
           "One-step text-to-image, 512x512; distilled from DreamShaper-8 (SD1.5 family)."),
    Preset("sdxs-512-dreamshaper-sketch", "IDKiro/sdxs-512-dreamshaper-sketch", "controlnet", "sd1.5",
           "Sketch ControlNet for sdxs-512-dreamshaper (white strokes on black).", control_type="sketch"),
    Preset("sdxs-512-dreamshaper-anime", "IDKiro/sdxs-512-dreamshaper-anime", "lora", "sd1.5",
           "Anime style LoRA (PEFT format) for sdxs-512-dreamshaper."),
    Preset("miniature", str(ASSETS / "miniature" / "sdxs"), "pipeline", "miniature",
           "The first bundled one-step model of the miniature world (64x64): tight edges ControlNet, weak "
           "text-to-image."),
    Preset("miniature-sd4", str(ASSETS / "miniature" / "sdxs-sd4"), "pipeline", "miniature-sd4",
           "Bundled one-step model distilled from the SD1.5-layout miniature teacher (64x64), with its edges and "
           "depth ControlNets and pastel LoRA; decoded by the teacher's VAE."),
    Preset("miniature-sd4-fast", str(ASSETS / "miniature" / "sdxs-sd4-fast"), "pipeline", "miniature-sd4",
           "miniature-sd4 with its tiny decoder, the offline default: faster decoding, fewer prompts drawn right."),
]}


# What the app, the CLI and ``load_engine()`` open when no model is named.
DEFAULT_MODEL = "miniature-sd4-fast"


def _is_hub_id(source: str) -> bool:
    return not source.startswith("/") and source.count("/") == 1 and not Path(source).exists()
