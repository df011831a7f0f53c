"""The shared training core at toy size: config, schedules, student derivation, losses, and the
loop's checkpoint/resume exactness and NaN guard (on the SSD method, which has two trained networks)."""

import copy
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

SMALL = dict(batch_size=2, num_pairs=4, teacher_steps=2, num_prompts=8, log_every=1, val_prompts=["a b"],
             lr=1e-3)


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
    return tmp_path_factory.mktemp("pairs") / "pairs.safetensors"


def ssd_config(teacher, run_dir, pairs, **kw):
    from trainers.core.config import load_config
    from trainers.methods.ssd import SSDConfig

    return load_config(SSDConfig, None, {**SMALL, "teacher": str(teacher), "run_dir": str(run_dir),
                                         "pair_cache": str(pairs), **kw}).validate()


# ---- config -------------------------------------------------------------------------------------------
def test_config_yaml_cli_overrides_and_dry_run(tmp_path, tiny_dir, capsys):
    from trainers.core.method import main
    from trainers.methods.ssd import SSD

    path = tmp_path / "c.yaml"
    path.write_text(f"teacher: {tiny_dir}\nmax_steps: 7\nalpha_start: 0.8\nval_prompts: [x, y]\n")
    assert main(SSD, ["--config", str(path), "--set", "lr=3e-4", "--max-steps", "9", "--dry-run"]) is None
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "ssd" and printed["max_steps"] == 9 and printed["lr"] == 3e-4
    assert printed["alpha_start"] == 0.8 and printed["val_prompts"] == ["x", "y"]


def test_save_config_replaces_whole_files_readable_by_others(tmp_path):
    from trainers.core.config import save_config
    from trainers.methods.ssd import SSDConfig

    run = tmp_path / "run"
    save_config(SSDConfig(max_steps=1), run)
    save_config(SSDConfig(max_steps=2), run)
    path = run / "config.json"
    assert json.loads(path.read_text())["max_steps"] == 2 and path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in run.iterdir()] == ["config.json"]  # no temp files left


def test_config_errors_name_the_bad_value(tiny_dir):
    from trainers.core.config import load_config
    from trainers.methods.ssd import SSDConfig

    with pytest.raises(ValueError, match="unknown option 'lr_rate'"):
        load_config(SSDConfig, None, {"lr_rate": 1})
    with pytest.raises(ValueError) as e:
        load_config(SSDConfig, None, {"teacher": str(tiny_dir), "mixed_precision": "fp16", "alpha_end": "1.5",
                                      "batch_size": 0}).validate()
    text = str(e.value)
    assert "fp16 diverges" in text and "alpha_end=1.5" in text and "batch_size=0" in text


def test_anneal_schedules():
    from trainers.core.schedules import Anneal

    lin, cos = Anneal(0.9, 0.3, 10), Anneal(10.0, 1.0, 10, "cosine")
    assert lin(0) == 0.9 and math.isclose(lin(5), 0.6) and math.isclose(lin(10), 0.3) and math.isclose(lin(99), 0.3)
    assert cos(0) == 10.0 and math.isclose(cos(5), 5.5) and cos(1) > 10.0 - 0.9  # slow start
    assert all(cos(i) >= cos(i + 1) for i in range(12))


def test_lr_schedules_warm_up_then_hold_or_decay():
    from trainers.core.schedules import lr_at

    assert lr_at(0, 1.0, 4) == 0.25 and lr_at(3, 1.0, 4) == 1.0 and lr_at(50, 1.0, 4, progress=0.9) == 1.0
    assert lr_at(0, 2.0, 0, "cosine", 0.0) == 2.0 and math.isclose(lr_at(9, 2.0, 0, "cosine", 0.5), 1.0)
    assert lr_at(9, 2.0, 0, "cosine", 1.0) == 0.0 and math.isclose(lr_at(1, 2.0, 4, "cosine", 0.5), 0.5)


# ---- student derivation -----------------------------------------------------------------------------------
def test_block_removed_config_turns_sd21_into_sdxs512():
    from sdxs_core.architectures import sdxs512_unet_config
    from trainers.core.student import block_removed_config

    sd21 = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, mid_block_type="UNetMidBlock2DCrossAttn",
                attention_head_dim=8, cross_attention_dim=768)
    got, want = block_removed_config(sd21), sdxs512_unet_config(768)
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "mid_block_type"):
        assert tuple(got[key]) == tuple(want[key]) if isinstance(want[key], tuple) else got[key] == want[key]


def test_block_removed_student_is_smaller_and_copies_weights(mid_teacher_dir):
    from sdxs_core.architectures import count_params
    from trainers.core.components import load_components
    from trainers.core.student import build_student, student_name_map

    teacher = load_components(mid_teacher_dir, "cpu")["unet"]
    student, info = build_student("block_removed", teacher)
    assert teacher.mid_block is not None and student.mid_block is None
    assert count_params(student) < 0.5 * count_params(teacher)
    name_map = student_name_map(teacher, student)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert len(name_map) == len(s_sd) and info["not_copied"] == []
    assert name_map["up_blocks.0.resnets.1.conv1.weight"] == "up_blocks.1.resnets.2.conv1.weight"  # the skip-taking one
    assert "mid_block" not in " ".join(name_map.values())
    for s_name, t_name in name_map.items():
        assert torch.equal(s_sd[s_name], t_sd[t_name]), s_name


# ---- losses ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parts(tiny_dir):
    from trainers.core.components import load_components
    from trainers.core.noise_schedule import NoiseSchedule
    from trainers.core.prompts import encode_prompts

    torch.set_num_threads(1)
    c = load_components(tiny_dir, "cpu")
    for m in (c["unet"], c["text_encoder"], c["vae"]):
        m.requires_grad_(False)
    c["schedule"] = NoiseSchedule(c["scheduler"].config)
    c["embeds"] = encode_prompts(c["tokenizer"], c["text_encoder"], ["a red circle", "b"], "cpu")
    return c


def test_gradient_l1_charges_a_blurred_thin_line_far_more_than_pixel_l1():
    """A 1-px dark line blurred over three columns: the pixel L1 sees a few pixels change, the L1 on
    pixel differences sees the line's contrast vanish; both are zero for identical images."""
    import torch.nn.functional as F

    from trainers.core.losses import downsampled_l1, gradient_l1

    sharp = torch.ones(1, 3, 16, 16)
    sharp[..., 8] = -1.0
    blurred = F.avg_pool2d(F.pad(sharp, (1, 1, 0, 0), mode="replicate"), (1, 3), stride=1)
    assert gradient_l1(sharp, sharp.clone()).item() == 0 and downsampled_l1(sharp, sharp, 1).item() == 0
    assert gradient_l1(blurred, sharp).item() > 2 * downsampled_l1(blurred, sharp, 1).item()
    flat_shift = sharp + 0.5  # a brightness offset has no edges to get wrong
    assert gradient_l1(flat_shift, sharp).item() == 0 and downsampled_l1(flat_shift, sharp, 1).item() > 0
    pred = blurred.clone().requires_grad_()
    gradient_l1(pred, sharp).backward()
    assert pred.grad[..., 7:10].abs().sum() > 0


def test_local_structure_ignores_a_restyle_but_not_a_moved_or_reshaped_object():
    """The layout-keeping measure: a square made lighter, lower-contrast or light-on-dark keeps it at 1;
    the same square moved by 3 px, or a diamond in its place, does not."""
    from trainers.core.losses import local_structure

    def scene(shape="square", dx=0):
        y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        inside = (abs(x - 16 - dx) <= 6) & (abs(y - 16) <= 6) if shape == "square" else abs(x - 16 - dx) + abs(y - 16) <= 8
        return torch.where(inside, 0.2, 0.7)[None, None]

    plain = scene()
    assert local_structure(plain, plain.clone()).item() == pytest.approx(1.0, abs=1e-3)
    for restyled in (0.5 * plain + 0.4, 1 - plain, plain + 0.2):
        assert local_structure(restyled, plain).item() > 0.99
    moved, reshaped = local_structure(scene(dx=3), plain).item(), local_structure(scene("diamond"), plain).item()
    assert moved < 0.95 and reshaped < 0.95
    image = scene(dx=3).requires_grad_()
    (1 - local_structure(image, plain)).sum().backward()
    assert image.grad.abs().sum() > 0  # a usable training signal
    flat = scene().requires_grad_()  # flat regions (zero local variance) must not give a NaN gradient
    (1 - local_structure(flat, plain)).sum().backward()
    assert torch.isfinite(flat.grad).all()


def test_fm_loss_zero_for_identical_and_positive_otherwise(tiny_parts):
    from trainers.core.losses import SSIMFeatureLoss, UNetEncoder

    fm = SSIMFeatureLoss(UNetEncoder(tiny_parts["unet"]))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    same, _ = fm(x, x.clone(), tiny_parts["embeds"])
    other, _ = fm(x, torch.randn(2, 4, 8, 8), tiny_parts["embeds"])
    assert abs(same.item()) < 1e-5 and other.item() > 0.05
    # the encoder stops after the down stages and leaves the U-Net usable for full forwards
    out = tiny_parts["unet"](x, torch.tensor([5, 5]), encoder_hidden_states=tiny_parts["embeds"]).sample
    assert out.shape == x.shape


def test_score_distillation_gradient_only_when_alpha_positive(tiny_parts):
    import copy

    from trainers.core.losses import ScoreDistillationLoss

    online = copy.deepcopy(tiny_parts["unet"])
    with torch.no_grad():  # a fake score that differs from the real one
        for p in online.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss_fn = ScoreDistillationLoss(tiny_parts["unet"], online, tiny_parts["schedule"])
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss, logs = loss_fn(x, tiny_parts["embeds"], alpha=0.8, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert x.grad.abs().sum() > 0 and logs["t_mean"] < 800
    x.grad = None
    loss, _ = loss_fn(x, tiny_parts["embeds"], alpha=0.0)
    loss.backward()
    assert loss.item() == 0 and x.grad.abs().sum() == 0


def test_kd_weight_v_turns_an_epsilon_error_into_the_v_error(tiny_parts):
    from trainers.core.losses import KDLoss

    sched = tiny_parts["schedule"]
    t = torch.tensor([0, 250, 500, 999])
    assert torch.equal(sched.kd_weight(t, "eps"), torch.ones(4))
    w = sched.kd_weight(t, "v")
    assert torch.all(w[1:] > w[:-1]) and w[-1] > 20 * w[0]  # the high-noise steps weigh most
    assert abs(sched.kd_weight(torch.arange(sched.num_timesteps), "v").mean().item() - 1) < 1e-5
    with pytest.raises(ValueError, match="x0"):
        sched.kd_weight(t, "x0")
    # the weighted epsilon error is the v error (up to the normalisation), at the same x_t
    g = torch.Generator().manual_seed(0)
    xt, e_s, e_t = (torch.randn(4, 4, 8, 8, generator=g) for _ in range(3))
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)

    def v(e):
        return a.sqrt() * e - (1 - a).sqrt() * sched.pred_x0(e, xt, t)
    v_err = ((v(e_s) - v(e_t)) ** 2).mean(dim=(1, 2, 3))
    eps_err = ((e_s - e_t) ** 2).mean(dim=(1, 2, 3))
    norm = (1 / sched.alphas_cumprod).mean()
    assert torch.allclose(eps_err * w * norm, v_err, rtol=1e-4)
    # KDLoss applies the weight to each sample's output term
    kd = KDLoss(tiny_parts["unet"], tiny_parts["unet"], {})
    embeds = tiny_parts["embeds"][:1].expand(4, -1, -1)
    with torch.no_grad():
        plain, _ = kd(xt, t, embeds)
        only_first, _ = kd(xt, t, embeds, torch.tensor([4.0, 0, 0, 0]))
    assert plain.item() == 0 and only_first.item() == 0  # a student equal to its teacher
    student = copy.deepcopy(tiny_parts["unet"])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        kd = KDLoss(tiny_parts["unet"], student, {})
        per_sample = ((student(xt, t, encoder_hidden_states=embeds).sample
                       - tiny_parts["unet"](xt, t, encoder_hidden_states=embeds).sample) ** 2).mean(dim=(1, 2, 3))
        weighted, logs = kd(xt, t, embeds, torch.tensor([4.0, 0, 0, 0]))
    assert torch.allclose(weighted, per_sample[0], rtol=1e-4) and logs["okd"] == pytest.approx(per_sample[0].item(), rel=1e-4)


# ---- the loop -------------------------------------------------------------------------------------------
def _student_weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_lands_on_the_exact_step(tmp_path, tiny_dir, pairs_file, capsys):
    from trainers.core.loop import list_checkpoints, train
    from trainers.methods.ssd import SSD

    torch.set_num_threads(1)
    kw = dict(max_steps=6, checkpoint_every=3, keep_checkpoints=5)
    cfg = ssd_config(tiny_dir, tmp_path / "full", pairs_file, **kw)
    train(cfg, SSD(cfg))

    class Preempted(Exception):
        pass

    def kill_at_4(step):
        if step == 4:
            raise Preempted

    cfg = ssd_config(tiny_dir, tmp_path / "cut", pairs_file, **kw)
    with pytest.raises(Preempted):
        train(cfg, SSD(cfg), on_step=kill_at_4)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-3"]
    seen = []
    cfg = ssd_config(tiny_dir, tmp_path / "cut", pairs_file, resume="latest", **kw)
    train(cfg, SSD(cfg), on_step=seen.append)
    assert seen == [4, 5, 6]  # continued after step 3

    full, resumed = _student_weights(tmp_path / "full"), _student_weights(tmp_path / "cut")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and log[-1]["images_seen"] == 12
    assert (tmp_path / "cut" / "samples" / "step-000006.png").is_file()
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["resume"] == "latest"

    # any checkpoint exports as a pipeline: resume from it with max_steps at its step (no step is taught)
    seen = []
    cfg = ssd_config(tiny_dir, tmp_path / "export", pairs_file, resume=str(tmp_path / "full" / "checkpoint-6"), max_steps=6)
    train(cfg, SSD(cfg), on_step=seen.append)
    exported = _student_weights(tmp_path / "export")
    assert seen == [] and all(torch.equal(full[k], exported[k]) for k in full)
    assert "nothing to train: step 6" in capsys.readouterr().out  # said, not silent


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_dir, pairs_file):
    from safetensors.torch import load_file

    from trainers.core.loop import NonFiniteLossError, train
    from trainers.methods.ssd import SSD

    torch.set_num_threads(1)
    cfg = ssd_config(tiny_dir, tmp_path / "run", pairs_file, max_steps=5, checkpoint_every=2)

    class Poisoned(SSD):
        def student_loss(self, batch, step):
            loss, logs = super().student_loss(batch, step)
            return (loss * float("nan"), logs) if step == 2 else (loss, logs)

    with pytest.raises(NonFiniteLossError) as e:
        train(cfg, Poisoned(cfg))
    msg = str(e.value)
    assert "student loss became nan at step 3 (after 2 good steps" in msg and "checkpoint-2" in msg and "--resume latest" in msg
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert ckpt.is_dir() and not (tmp_path / "run" / "checkpoint-3").exists() and not (tmp_path / "run" / "final").exists()
    weights = load_file(ckpt / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_wall_time_budget_ends_the_run_and_drives_the_schedules(tmp_path, tiny_dir, pairs_file):
    """max_minutes stops a run before max_steps with a checkpoint and an export, and the cosine LR
    and SSD's annealed alpha follow the time used, so a short budget still ends fully annealed."""
    from trainers.core.loop import list_checkpoints, train
    from trainers.methods.ssd import SSD

    torch.set_num_threads(1)
    cfg = ssd_config(tiny_dir, tmp_path / "run", pairs_file, max_steps=10_000, max_minutes=0.03,
                     lr_schedule="cosine", alpha_start=0.9, alpha_end=0.4, checkpoint_every=10_000)
    train(cfg, SSD(cfg), on_step=lambda step: time.sleep(0.25))  # >= 2 steps within the 1.8 s
    state = json.loads((list_checkpoints(tmp_path / "run")[-1] / "trainer_state.json").read_text())
    assert 2 <= state["step"] < 10_000 and state["train_seconds"] >= 1.8
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == state["step"] and math.isclose(log[-1]["alpha"], 0.4)
    assert log[0]["student/lr"] == pytest.approx(1e-3, rel=0.05) and log[-1]["student/lr"] < 0.9e-3
    assert (tmp_path / "run" / "final" / "unet" / "config.json").is_file()
    # resuming a spent budget trains no further step and exports again
    seen = []
    cfg = ssd_config(tiny_dir, tmp_path / "run", pairs_file, max_steps=10_000, max_minutes=0.03, resume="latest")
    train(cfg, SSD(cfg), on_step=seen.append)
    assert seen == []


def test_link_shared_parts_links_only_identical_components(tmp_path):
    from trainers.core.pipeline_folder import link_shared_parts

    def part(root, name, files):
        (root / name).mkdir(parents=True)
        for file, text in files.items():
            (root / name / file).write_text(text)

    base, new = tmp_path / "teacher", tmp_path / "student"
    part(base, "vae", {"config.json": '{"_name_or_path": "runs/a/vae", "c": 4}', "w.safetensors": "abc"})
    part(base, "unet", {"config.json": '{"c": 1}', "w.safetensors": "abc"})
    part(base, "tokenizer", {"vocab.json": "{}"})
    (base / "scheduler").symlink_to(base / "vae")  # a peer's own link is never a target
    part(new, "vae", {"config.json": '{"_name_or_path": "elsewhere/vae", "c": 4}', "w.safetensors": "abc"})
    part(new, "unet", {"config.json": '{"c": 1}', "w.safetensors": "abd"})  # one byte differs
    part(new, "tokenizer", {"vocab.json": "{}", "merges.txt": ""})  # one file more
    part(new, "scheduler", {"config.json": '{"_name_or_path": "x", "c": 4}', "w.safetensors": "abc"})
    assert link_shared_parts(new, [base]) == ["vae -> ../teacher/vae"]
    assert (new / "vae").is_symlink() and (new / "vae" / "w.safetensors").read_text() == "abc"
    assert not any((new / d).is_symlink() for d in ("unet", "tokenizer", "scheduler"))


def test_load_vae_picks_the_class_its_config_names(tmp_path, mid_teacher_dir):
    from diffusers import AutoencoderKL, AutoencoderTiny

    from trainers.core.components import load_vae

    assert type(load_vae(mid_teacher_dir)) is AutoencoderTiny  # a pipeline folder: its vae
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8).save_pretrained(tmp_path / "kl")
    assert type(load_vae(tmp_path / "kl")) is AutoencoderKL
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        load_vae(tmp_path)


def test_replacing_a_linked_model_keeps_what_its_dependents_had(tmp_path):
    from trainers.core.pipeline_folder import link_shared_parts, write_pipeline_atomically

    class Folder:  # what write_pipeline_atomically needs of a pipeline
        def __init__(self, text):
            self.text = text

        def save_pretrained(self, path, safe_serialization=True):
            (Path(path) / "vae").mkdir()
            os.close(os.open(Path(path) / "vae" / "w.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))  # a private writer
            (Path(path) / "vae" / "w.safetensors").write_text(self.text)

    write_pipeline_atomically(Folder("old"), tmp_path / "teacher")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "teacher", tmp_path / "teacher" / "vae" / "w.safetensors")}
    assert modes == {"teacher": 0o755, "w.safetensors": 0o644}  # readable by whoever runs the app
    write_pipeline_atomically(Folder("old"), tmp_path / "student", link_to=[tmp_path / "teacher"])
    assert (tmp_path / "student" / "vae").is_symlink()
    write_pipeline_atomically(Folder("new"), tmp_path / "teacher")
    assert (tmp_path / "teacher" / "vae" / "w.safetensors").read_text() == "new"
    student = tmp_path / "student" / "vae"
    assert not student.is_symlink() and (student / "w.safetensors").read_text() == "old"
    assert link_shared_parts(tmp_path / "student", [tmp_path / "teacher"]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]  # no temp folders left


def test_prompt_sources_are_registered_not_imported_by_the_core(tmp_path):
    import ast
    from pathlib import Path

    from trainers.core.config import load_config
    from trainers.core.prompts import PROMPT_SOURCES, load_prompts, register_prompt_source
    from trainers.methods.ssd import SSDConfig

    core = Path(__file__).resolve().parent.parent / "trainers" / "core"
    for path in core.glob("*.py"):
        if path.name == "image_folder.py":  # its classifier captions: moved out with the control-type table
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "miniature" not in (node.module or ""), f"{path.name} imports {node.module}"
    assert load_prompts("miniature", 3, 0) == load_prompts("miniature", 3, 0) and len(load_prompts("miniature", 3)) == 3
    with pytest.raises(ValueError, match="prompts='nope': use 'miniature'"):
        load_config(SSDConfig, None, {"prompts": "nope"}).validate()
    register_prompt_source("abc", lambda n, seed: ["a", "b", "c"][:n])
    try:
        assert load_prompts("abc", 2) == ["a", "b"]
        assert not any("prompts=" in e for e in load_config(SSDConfig, None, {"prompts": "abc"}).errors())
    finally:
        del PROMPT_SOURCES["abc"]
    (tmp_path / "p.txt").write_text("x\n\ny\nz\n")
    assert load_prompts(str(tmp_path / "p.txt"), 2) == ["x", "y"]


def test_a_config_states_what_differs_from_its_defaults_and_names_its_method(tmp_path):
    from trainers.core.config import load_config
    from trainers.methods.controlnet_kd import ControlNetKDConfig
    from trainers.methods.ssd import SSDConfig

    (tmp_path / "world_base.yaml").write_text("seed: 3\nlr: 1.0e-4\nnum_pairs: 64\n")
    (tmp_path / "pairs.yaml").write_text("defaults: world_base.yaml\nnum_pairs: 128\nteacher_steps: 5\n")
    (tmp_path / "ssd.yaml").write_text("defaults: pairs.yaml\nmethod: ssd\nlr: 2.0e-4\n")
    config = load_config(SSDConfig, str(tmp_path / "ssd.yaml"), {"teacher_steps": 7})
    assert (config.seed, config.lr, config.num_pairs, config.teacher_steps) == (3, 2e-4, 128, 7)  # later wins
    with pytest.raises(ValueError, match="is a config of method 'ssd', not 'controlnet_kd'"):
        load_config(ControlNetKDConfig, str(tmp_path / "ssd.yaml"))
    (tmp_path / "loop.yaml").write_text("defaults: loop.yaml\n")
    with pytest.raises(ValueError, match="defaults form a loop"):
        load_config(SSDConfig, str(tmp_path / "loop.yaml"))
    (tmp_path / "typo.yaml").write_text("defaults: nowhere.yaml\n")
    with pytest.raises(ValueError, match="defaults='nowhere.yaml' must name a YAML file"):
        load_config(SSDConfig, str(tmp_path / "typo.yaml"))
