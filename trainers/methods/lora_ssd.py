"""LoRA distillation into the one-step student by Segmented Score Distillation (paper section 3.2,
"LoRA", Fig. 4): a style LoRA made for the multi-step base becomes a LoRA of the one-step model.

Frozen:  the offline DM = the offline U-Net + the pretrained style LoRA (real score of the styled
         distribution); the teacher (its ODE pairs, sampled with the style LoRA when
         ``teacher_takes_lora``, are the FM targets; its plain down stages are the FM encoder); the
         student's base weights; the text encoder. With ``restyle_strength`` < 1 the FM targets are
         the plain ODE pairs restyled by the LoRA teacher (SDEdit from each pair's own noise), targets
         that keep the plain images' layouts where the LoRA teacher's own ODE often changes them (in
         the miniature world this raised style, not layout consistency: see docs/notebook/).
Trained: a new PEFT LoRA on the one-step student (rank / alpha / targets / blocks configurable; B starts at
         zero, so training starts from the student itself: no FM warmup; ``lora_init`` continues one
         this method wrote instead); the online DM, a full copy of the offline U-Net *without* the
         style LoRA (it models the student's own outputs).
Loss:    as ``ssd``: online DM denoising loss every step; student: score difference on [0, alpha*T]
         + lambda_FM * SSIM feature matching. Without the style LoRA in the teacher the FM targets
         are unstyled, so lambda_FM is scaled by ``lambda_fm_scale_without_teacher_lora`` (< 1).
Beyond the paper: ``lambda_layout`` > 0 adds ``LayoutKeepingLoss`` between the student's sample and
         its own sample with the LoRA switched off (same noise and caption, no grad): local image
         structure must stay, colours may change. 0 (the default) is the paper's loss.
Output:  ``final/pytorch_lora_weights.safetensors`` (diffusers format, alpha/rank baked into B) for
         ``OneStepEngine.load_lora`` / ``load_engine(student, lora=...)``.

The style LoRA may be a diffusers file, a PEFT folder or a kohya file (``sdxs_core.lora.read_lora``);
one made for another base raises ``IncompatibleWeightsError`` before any pair is sampled.

    python -m trainers.methods.lora_ssd --config trainers/configs/lora_ssd_miniature.yaml
"""

import copy
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainers.core.losses import LayoutKeepingLoss, unwrap
from trainers.core.method import main
from trainers.core.pairs import RestyleSpec, pair_cache, restyled_pair_cache
from trainers.core.pipeline_folder import write_pipeline_atomically
from trainers.core.student import build_student
from trainers.methods.ssd import SSD, StudentSSDConfig

STYLE_ADAPTER = "style"
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class LoRASSDConfig(StudentSSDConfig):
    student: str = "copy"  # the one-step student: a pipeline / U-Net folder (the ssd output); copy for tests
    style_lora: str = ""  # the pretrained LoRA of the multi-step base: diffusers / kohya file or PEFT folder
    style_lora_scale: float = 1.0
    teacher_takes_lora: bool = True  # the teacher samples its ODE pairs (FM targets) with the style LoRA
    lambda_fm_scale_without_teacher_lora: float = 0.1  # lambda_FM factor when it does not (unstyled targets)
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lora_dropout: float = 0.0
    # module-name prefixes (e.g. up_blocks.2, conv_out) the LoRA is confined to; [] = the whole U-Net. A style drawn
    # at full resolution can live in the last decoder stage, where it cannot redraw the scene's layout
    lora_blocks: list[str] = field(default_factory=list)
    lora_init: str = ""  # a student LoRA this method wrote, to continue (same rank); "" = a new one (B = 0)
    # < 1: FM targets keep the plain pairs' layouts: each plain teacher image restyled by SDEdit at this
    # strength (its own noise); 1: the LoRA teacher's ODE from the noise (the paper's pairs)
    restyle_strength: float = 1.0
    plain_pair_cache: str = ""  # the plain ODE pairs to restyle ("" = run_dir/pairs.safetensors, made if missing)
    restyled_pair_cache: str = ""  # where the restyled pairs are cached ("" = run_dir/pairs-restyled.safetensors)
    # beyond the paper: weight of the layout-keeping term (student with vs without its LoRA, decoded); 0 = off
    lambda_layout: float = 0.0
    layout_window: int = 7  # pixels: the window of the local structure comparison
    layout_decoder: str = ""  # what the term decodes with: "" = the teacher's VAE; a pipeline or codec folder

    method = "lora_ssd"

    def errors(self):
        e = super().errors()
        if not self.style_lora:
            e.append("style_lora is required: the pretrained LoRA to distil (diffusers/kohya file or PEFT folder)")
        elif not Path(self.style_lora).exists():
            e.append(f"style_lora={self.style_lora!r} does not exist")
        if self.lora_rank < 1 or not self.lora_alpha > 0 or not self.lora_targets:
            e.append(f"lora_rank={self.lora_rank} must be >= 1, lora_alpha={self.lora_alpha} > 0, lora_targets non-empty")
        if not 0 < self.lambda_fm_scale_without_teacher_lora <= 1:
            e.append(f"lambda_fm_scale_without_teacher_lora={self.lambda_fm_scale_without_teacher_lora} must be in (0, 1]")
        if not 0 < self.restyle_strength <= 1:
            e.append(f"restyle_strength={self.restyle_strength} must be in (0, 1]")
        elif self.restyle_strength < 1 and not self.teacher_takes_lora:
            e.append("restyle_strength < 1 restyles with the teacher + style LoRA: it needs teacher_takes_lora: true")
        if self.lambda_layout < 0 or self.layout_window < 3 or self.layout_window % 2 == 0:
            e.append(f"lambda_layout={self.lambda_layout} must be >= 0 and layout_window={self.layout_window} an odd "
                     f"number >= 3")
        if self.layout_decoder and not Path(self.layout_decoder).exists():
            e.append(f"layout_decoder={self.layout_decoder!r} does not exist")
        if self.lora_init and not Path(self.lora_init).exists():
            e.append(f"lora_init={self.lora_init!r} does not exist")
        return e


def lora_modules(unet, targets: list[str], blocks: list[str]) -> list[str]:
    """The modules a LoRA goes on: named by ``targets`` (PEFT's rule: the name or its last parts) and
    inside one of ``blocks`` (module-name prefixes). Nothing matching is an error, not an empty LoRA."""
    names = [n for n, _ in unet.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    inside = [n for n in names if any(n == b or n.startswith(b + ".") for b in blocks)]
    if not inside:
        raise ValueError(f"no module of the U-Net is one of lora_targets={list(targets)} inside "
                         f"lora_blocks={list(blocks)}")
    return inside


def add_student_lora(unet, rank: int, alpha: float, targets: list[str], dropout: float = 0.0, blocks: list[str] = ()):
    """Freeze ``unet`` and give it a new PEFT LoRA (B = 0: the model is unchanged until trained) on
    ``targets``, only inside ``blocks`` when given. The LoRA's parameters are then the only ones that
    require grad."""
    from peft import LoraConfig

    modules = lora_modules(unet, targets, blocks) if blocks else list(targets)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=dropout,
                                init_lora_weights=True))
    return unet


def load_student_lora(unet, source: str, rank: int, alpha: float):
    """Continue a distilled LoRA: put ``source`` (a file ``student_lora_state`` wrote, alpha / rank
    folded into B) into the student's trainable adapter, B unfolded again. Every adapter weight must
    come from the file, at this run's rank: a partial or other-rank LoRA is refused, not half-loaded."""
    from peft import set_peft_model_state_dict
    from peft.utils import get_peft_model_state_dict

    from sdxs_core.errors import IncompatibleWeightsError
    from sdxs_core.lora import check_lora_fits, read_lora

    state, network_alphas, _ = read_lora(source)
    if network_alphas:
        raise IncompatibleWeightsError(f"lora_init '{source}' carries network alphas: continue a LoRA written by lora_ssd")
    check_lora_fits(unet, state)  # read_lora gives PEFT names, the adapter's own
    want = get_peft_model_state_dict(unet)
    if state.keys() != want.keys() or any(state[k].shape != want[k].shape for k in want):
        ranks = sorted({v.shape[0] for k, v in state.items() if "lora_A" in k})
        raise IncompatibleWeightsError(
            f"lora_init '{source}' does not match the student LoRA of this run (rank {rank}, targets as configured): "
            f"it has {len(state)} tensors of rank {ranks}, the run needs {len(want)}")
    set_peft_model_state_dict(unet, {k: v / (alpha / rank) if "lora_B" in k else v for k, v in state.items()})
    return unet


def student_lora_state(unet, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """The student LoRA in diffusers' PEFT naming (``<layer>.lora_A/B.weight``), with ``alpha / rank``
    folded into B: a diffusers file carries no alpha, and loaders then assume alpha = rank (scale 1).
    Not the legacy converter's naming: it renames attention layers only, and diffusers' loader drops
    the legacy half of a file that mixes both (a LoRA on convs or feed-forwards)."""
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}
    for k in state:
        if "lora_B" in k:
            state[k] *= alpha / rank
    return state


@contextmanager
def adapters_off(unet):
    """The plain student inside the block: its LoRA switched off, then on again (trainable as before)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


class _LoRAFile:
    """What ``write_pipeline_atomically`` saves: one diffusers LoRA file."""

    def __init__(self, state):
        self.state = state

    def save_pretrained(self, folder, safe_serialization=True):
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=self.state, safe_serialization=True)


def add_style_lora(unet, source: str, scale: float):
    """The pretrained LoRA into a frozen U-Net, through the engine's loader (checked first)."""
    from sdxs_core.lora import apply_lora

    apply_lora(unet, source, STYLE_ADAPTER)
    unet.set_adapters([STYLE_ADAPTER], [scale])
    return unet.eval().requires_grad_(False)  # peft's set_adapter marks the active adapter trainable


class LoRASSD(SSD):
    config_cls = LoRASSDConfig

    def setup(self, accelerator):
        from sdxs_core.errors import IncompatibleWeightsError
        from sdxs_core.lora import check_lora_fits, read_lora

        c = self.config
        teacher = self.load_teacher(accelerator)
        base = self.offline_dm()
        # 1. refuse a LoRA for another base now, before the (expensive) teacher pairs are sampled
        state, _, _ = read_lora(c.style_lora)
        check_lora_fits(base, state)
        if c.teacher_takes_lora:
            try:
                check_lora_fits(teacher["unet"], state)
            except IncompatibleWeightsError as e:
                raise IncompatibleWeightsError(f"{e} The teacher cannot take this LoRA: set teacher_takes_lora: false "
                                               f"(lambda_FM is then scaled down).") from None
        # 2. networks: copies of the plain U-Nets before any LoRA goes anywhere
        student, self.student_info = build_student(c.student, teacher["unet"])
        student = add_student_lora(student.to(self.device), c.lora_rank, c.lora_alpha, c.lora_targets, c.lora_dropout,
                                   c.lora_blocks)
        if c.lora_init:
            load_student_lora(student, c.lora_init, c.lora_rank, c.lora_alpha)
        online = copy.deepcopy(base).requires_grad_(True)  # no style LoRA: it models the student's outputs
        offline = add_style_lora(copy.deepcopy(base), c.style_lora, c.style_lora_scale)  # teacher stays plain (FM encoder)
        self.nets, self.offline = {"student": student}, offline
        # 3. the teacher's ODE pairs (styled when the teacher takes the LoRA), unless no row keeps one
        if self.pairs_needed():
            self.load_pairs(accelerator)
        fm_scale = 1.0 if c.teacher_takes_lora else c.lambda_fm_scale_without_teacher_lora
        self.layout = LayoutKeepingLoss(self.layout_decoder(), c.layout_window) if c.lambda_layout else None
        return self.score_distillation(online, "student", real=offline, fake=self.prepared("online_dm"),
                                       fm_scale=fm_scale)

    def student_loss(self, batch, step):
        x0 = self.student_sample(batch)
        loss, logs = self.distillation_loss(x0, batch, step)
        if self.layout is None:
            return loss, logs
        with torch.no_grad(), adapters_off(unwrap(self.nets["student"])):
            plain = self.student_sample(batch)
        keep, keep_logs = self.layout(x0, plain)
        return loss + self.config.lambda_layout * keep, {**logs, **keep_logs}

    def layout_decoder(self):
        """The frozen decoder the layout term reads images through (fp32)."""
        from trainers.core.components import load_vae

        if not self.config.layout_decoder:
            return self.teacher["vae"]
        return load_vae(self.config.layout_decoder).to(self.device, torch.float32).eval().requires_grad_(False)

    def load_pairs(self, accelerator):
        """The FM pairs: the LoRA teacher's ODE pairs, its restyled plain pairs (``restyle_strength`` < 1)
        or, when the teacher cannot take the LoRA, the plain ones; made once by the main process."""
        c = self.config
        if c.restyle_strength < 1:
            plain = Path(c.plain_pair_cache or Path(c.run_dir) / "pairs.safetensors")
            if accelerator.is_main_process and not plain.is_file():
                pair_cache(plain, self.pair_spec(), self.device, batch=self.pair_batch())
            spec = RestyleSpec(plain=str(plain), n=c.num_pairs, teacher=c.teacher, lora=c.style_lora,
                               lora_scale=c.style_lora_scale, strength=c.restyle_strength, steps=c.teacher_steps,
                               guidance=c.teacher_guidance)
            path = Path(c.restyled_pair_cache or Path(c.run_dir) / "pairs-restyled.safetensors")
            self.pairs = self.shared_cache(accelerator, restyled_pair_cache, path, spec)
            return self.pairs
        default = "pairs-style.safetensors" if c.teacher_takes_lora else "pairs.safetensors"
        path = Path(c.pair_cache or Path(c.run_dir) / default)
        lora = dict(lora=c.style_lora, lora_scale=c.style_lora_scale) if c.teacher_takes_lora else {}
        self.pairs = self.shared_cache(accelerator, pair_cache, path, self.pair_spec(**lora))
        return self.pairs

    def export(self, out, nets, info):
        c = self.config
        state = student_lora_state(nets["student"], c.lora_rank, c.lora_alpha)
        info = {**info, "teacher": c.teacher, "student": c.student, "style_lora": c.style_lora,
                "teacher_takes_lora": c.teacher_takes_lora, "restyle_strength": c.restyle_strength,
                "lora_init": c.lora_init, "fresh_ratio": c.fresh_ratio, "alpha_start": c.alpha_start,
                "alpha_end": c.alpha_end, "lambda_layout": c.lambda_layout, "lora_blocks": c.lora_blocks,
                "rank": c.lora_rank, "alpha_baked_into_B": c.lora_alpha}
        return write_pipeline_atomically(_LoRAFile(state), out, {"train_info.json": json.dumps(info, indent=2)})


if __name__ == "__main__":
    main(LoRASSD, doc=__doc__)
