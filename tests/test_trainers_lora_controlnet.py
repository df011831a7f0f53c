"""LoRA-SSD and ControlNet-SSD (paper section 3.2, Figs. 4-5; ControlNet KD of section 3.1) for a
few steps on tiny random models: what is frozen stays bit-identical, what is trained changes, and the
outputs load through the engine like any user LoRA / ControlNet."""

import dataclasses
import json

import pytest
import torch

from sdxs_core.testkit import ATTENTION

SMALL = dict(batch_size=2, num_pairs=4, teacher_steps=2, num_prompts=8, max_steps=2, checkpoint_every=100,
             log_every=1, val_prompts=["a b"], lr=1e-3)


def run(method_cls, teacher, run_dir, **kw):
    from trainers.core.config import load_config
    from trainers.core.loop import train

    torch.set_num_threads(1)
    known = {f.name for f in dataclasses.fields(method_cls.config_cls)}
    small = {k: v for k, v in SMALL.items() if k in known}  # controlnet_teacher has no pair options
    cfg = load_config(method_cls.config_cls, None, {**small, "teacher": str(teacher), "run_dir": str(run_dir), **kw})
    method = method_cls(cfg.validate())
    return train(cfg, method), method


def base_weights(unet) -> dict:
    """A U-Net's own weights, PEFT's ``base_layer`` renaming undone, LoRA tensors left out."""
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


def has_lora(unet) -> bool:
    return any("lora_" in name for name, _ in unet.named_parameters())


# ---- LoRA-SSD ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def style_lora(tiny_dir, tmp_path_factory):
    from sdxs_core.testkit import write_tiny_lora

    return write_tiny_lora(tiny_dir, tmp_path_factory.mktemp("lora") / "peft", fmt="peft")


ALL_LAYERS = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]  # LoCon-style


@pytest.mark.parametrize("targets", [list(ATTENTION), ALL_LAYERS], ids=["attention", "attention+ff+conv"])
def test_lora_ssd_trains_only_the_student_lora_and_exports_an_engine_lora(tmp_path, tiny_dir, style_lora, targets):
    from sdxs_core import load_engine
    from trainers.core.components import load_components
    from trainers.core.losses import unwrap
    from trainers.core.noise_schedule import NoiseSchedule, one_step
    from trainers.methods.lora_ssd import STYLE_ADAPTER, LoRASSD

    out, method = run(LoRASSD, tiny_dir, tmp_path / "lora", style_lora=str(style_lora), lora_rank=2, lora_alpha=4.0,
                      lora_targets=targets)
    student_lora_modules = {n.split(".lora_A")[0] for n, _ in unwrap(method.nets["student"]).named_parameters() if ".lora_A" in n}
    assert any(m.endswith("conv1") for m in student_lora_modules) == ("conv1" in targets)
    initial = load_components(tiny_dir, "cpu")["unet"].state_dict()
    student = unwrap(method.nets["student"])
    # the student: base weights bit-identical, its new LoRA trained
    assert base_weights(student).keys() == initial.keys()
    assert all(torch.equal(base_weights(student)[k], initial[k]) for k in initial)
    lora_b = [p for n, p in student.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {n for n, _ in student.named_parameters() if "lora_" in n}
    # the style LoRA sits in the offline DM only; the online DM is trained and has no LoRA
    online = unwrap(method.nets["online_dm"])
    assert has_lora(method.offline) and STYLE_ADAPTER in method.offline.peft_config
    assert not has_lora(online) and not has_lora(method.teacher["unet"])
    assert any(not torch.equal(online.state_dict()[k], initial[k]) for k in initial)
    assert all(torch.equal(base_weights(method.offline)[k], initial[k]) for k in initial)
    # styled pairs: the teacher sampled with the style LoRA (a separate cache from the plain pairs)
    assert (tmp_path / "lora" / "pairs-style.safetensors").is_file()

    # the output is a diffusers LoRA file the engine loads; it reproduces the trained student exactly
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    engine = load_engine(tiny_dir, device="cpu")  # student "copy": the student pipeline is the tiny one
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = engine.generate("a b", noise=noise, output_type="latent").images
    name = engine.load_lora(out)
    styled = engine.generate("a b", noise=noise, output_type="latent").images
    assert (styled - plain).abs().max() > 1e-5
    with torch.no_grad():
        want = one_step(student.eval(), noise, engine.encode_prompt(["a b"]), NoiseSchedule(engine.scheduler.config))
    torch.testing.assert_close(styled, want, atol=1e-4, rtol=1e-4)  # alpha/rank folded into B correctly
    engine.set_lora_scale(name, 0.0)
    torch.testing.assert_close(engine.generate("a b", noise=noise, output_type="latent").images, plain)


def test_lora_ssd_continues_its_own_lora_and_refuses_another_rank(tmp_path, tiny_dir, style_lora):
    from safetensors.torch import load_file

    from sdxs_core.errors import IncompatibleWeightsError
    from trainers.core.config import load_config
    from trainers.core.losses import unwrap
    from trainers.methods.lora_ssd import LoRASSD, student_lora_state

    out, _ = run(LoRASSD, tiny_dir, tmp_path / "first", style_lora=str(style_lora), lora_rank=2, lora_alpha=4.0,
                 fresh_ratio=0.5)
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    made = json.loads((out / "train_info.json").read_text())  # provenance: where it started, its fresh noise
    assert (made["lora_init"], made["fresh_ratio"], made["rank"], made["lambda_layout"]) == ("", 0.5, 2, 0.0)
    assert (made["alpha_start"], made["alpha_end"]) == (0.9, 0.5)  # the score segment it was trained on
    base = {**SMALL, "teacher": str(tiny_dir), "run_dir": str(tmp_path / "second"), "style_lora": str(style_lora),
            "pair_cache": str(tmp_path / "first" / "pairs-style.safetensors"), "lora_init": str(out)}
    method = LoRASSD(load_config(LoRASSD.config_cls, None, {**base, "lora_rank": 2, "lora_alpha": 4.0}).validate())
    method.setup(Accel())
    # the continued adapter writes back exactly the file it started from (B unfolded, then folded again)
    again = student_lora_state(unwrap(method.nets["student"]), 2, 4.0)
    assert {f"unet.{k}" for k in again} == saved.keys()
    for k, v in again.items():
        torch.testing.assert_close(v, saved[f"unet.{k}"])
    assert any(v.abs().sum() > 0 for k, v in again.items() if "lora_B" in k)  # B was trained: not a zero init
    # a LoRA of another rank is refused with the reason, not half-loaded
    other = LoRASSD(load_config(LoRASSD.config_cls, None, {**base, "lora_rank": 4, "lora_alpha": 4.0}).validate())
    with pytest.raises(IncompatibleWeightsError, match="rank 4"):
        other.setup(Accel())
    with pytest.raises(ValueError, match="lora_init"):
        load_config(LoRASSD.config_cls, None, {**base, "lora_init": str(tmp_path / "nope")}).validate()


def test_lora_ssd_score_only_in_the_last_stage_samples_no_pairs_and_keeps_its_blocks(tmp_path, tiny_dir, style_lora):
    from safetensors.torch import load_file

    from sdxs_core import load_engine
    from trainers.core.losses import unwrap
    from trainers.methods.lora_ssd import LoRASSD, add_student_lora

    blocks = ["up_blocks.1", "conv_out"]
    out, method = run(LoRASSD, tiny_dir, tmp_path / "lora", style_lora=str(style_lora), fresh_ratio=1.0,
                      alpha_start=0.4, alpha_end=0.4, lora_targets=["conv1", "conv2", "conv_out"], lora_blocks=blocks)
    assert not list((tmp_path / "lora").glob("pairs*.safetensors"))  # the LoRA teacher never sampled
    student = unwrap(method.nets["student"])
    adapted = {n.split(".lora_A")[0] for n, _ in student.named_parameters() if ".lora_A" in n}
    assert "conv_out" in adapted and any(n.startswith("up_blocks.1.") for n in adapted)
    assert all(n == "conv_out" or n.startswith("up_blocks.1.") for n in adapted)  # conv1/2 elsewhere left alone
    assert any(p.abs().sum() > 0 for n, p in student.named_parameters() if "lora_B" in n)  # the score term trained it
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert {k.split(".lora_")[0].removeprefix("unet.") for k in saved} == adapted
    made = json.loads((out / "train_info.json").read_text())
    assert (made["fresh_ratio"], made["lora_blocks"]) == (1.0, blocks)
    engine = load_engine(tiny_dir, device="cpu")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = engine.generate("a b", noise=noise, output_type="latent").images
    engine.load_lora(out)
    assert (engine.generate("a b", noise=noise, output_type="latent").images - plain).abs().max() > 1e-5
    with pytest.raises(ValueError, match="inside lora_blocks"):  # a typo is an error, not a LoRA on nothing
        add_student_lora(method.teacher["unet"], 2, 2.0, ["conv1"], blocks=["up_block.1"])


def test_lora_ssd_refuses_a_lora_for_another_base_before_training(tmp_path, tiny_dir, other_base_dir):
    from sdxs_core.errors import IncompatibleWeightsError
    from sdxs_core.testkit import write_tiny_lora
    from trainers.methods.lora_ssd import LoRASSD

    foreign = write_tiny_lora(other_base_dir, tmp_path / "foreign")  # diffusers format, cross-attention 48
    with pytest.raises(IncompatibleWeightsError, match="cross-attention width 48"):
        run(LoRASSD, tiny_dir, tmp_path / "run", style_lora=str(foreign))
    assert not list((tmp_path / "run").glob("pairs*")) and not list((tmp_path / "run").glob("checkpoint-*"))


def test_lora_ssd_without_teacher_lora_reduces_lambda_fm(tmp_path, tiny_dir, tiny_lora_file):
    from trainers.core.config import load_config
    from trainers.methods.lora_ssd import LoRASSD

    cfg = load_config(LoRASSD.config_cls, None, {**SMALL, "teacher": str(tiny_dir), "run_dir": str(tmp_path),
                                                 "style_lora": str(tiny_lora_file), "teacher_takes_lora": False,
                                                 "lambda_fm_scale_without_teacher_lora": 0.25}).validate()
    method = LoRASSD(cfg)
    method.setup(Accel())
    assert method.lambda_fm(0) == pytest.approx(0.25 * cfg.lambda_fm_start)
    assert (tmp_path / "pairs.safetensors").is_file()  # plain pairs: shareable with the other methods


def test_lora_ssd_restyles_plain_pairs_keeping_their_noise(tmp_path, tiny_dir, style_lora):
    from sdxs_core import load_engine
    from trainers.core.config import load_config
    from trainers.core.pairs import read_pairs
    from trainers.methods.lora_ssd import LoRASSD

    opts = {**SMALL, "teacher": str(tiny_dir), "run_dir": str(tmp_path), "style_lora": str(style_lora),
            "teacher_steps": 4, "restyle_strength": 0.5}
    method = LoRASSD(load_config(LoRASSD.config_cls, None, opts).validate())
    method.setup(Accel())
    plain, _ = read_pairs(tmp_path / "pairs.safetensors")  # made first: none existed
    restyled, spec = read_pairs(tmp_path / "pairs-restyled.safetensors")
    assert spec["strength"] == 0.5 and spec["plain"]["n"] == 4
    # the same noise and prompts, the targets the LoRA teacher's SDEdit of the plain images
    assert torch.equal(restyled["noise"], plain["noise"]) and restyled["prompts"] == plain["prompts"]
    assert torch.equal(method.pairs["latents"], restyled["latents"])
    engine = load_engine(tiny_dir, device="cpu", lora=style_lora)
    side = plain["noise"].shape[-1] * engine.vae_scale_factor
    want = engine.generate(plain["prompts"][:2], seed=[0, 1], noise=plain["noise"][:2], init_latents=plain["latents"][:2],
                           strength=0.5, num_inference_steps=4, guidance_scale=method.config.teacher_guidance,
                           height=side, width=side, output_type="latent").images
    torch.testing.assert_close(restyled["latents"][:2], want, atol=1e-5, rtol=1e-5)
    assert (restyled["latents"] - plain["latents"]).abs().max() > 1e-3
    # cached: the same settings reuse the file; another strength remakes it
    stamp = (tmp_path / "pairs-restyled.safetensors").stat().st_mtime_ns
    LoRASSD(load_config(LoRASSD.config_cls, None, opts).validate()).setup(Accel())
    assert (tmp_path / "pairs-restyled.safetensors").stat().st_mtime_ns == stamp
    LoRASSD(load_config(LoRASSD.config_cls, None, {**opts, "restyle_strength": 0.75}).validate()).setup(Accel())
    assert read_pairs(tmp_path / "pairs-restyled.safetensors")[1]["strength"] == 0.75
    # more pairs than the plain cache holds, or restyling without the LoRA teacher: refused, with the reason
    with pytest.raises(ValueError, match="holds 4 plain pairs; restyling needs 8"):
        LoRASSD(load_config(LoRASSD.config_cls, None, {**opts, "num_pairs": 8}).validate()).setup(Accel())
    with pytest.raises(ValueError, match="needs teacher_takes_lora"):
        load_config(LoRASSD.config_cls, None, {**opts, "teacher_takes_lora": False}).validate()


def test_lora_ssd_layout_term_pulls_the_styled_sample_toward_the_plain_one(tmp_path, tiny_dir, style_lora):
    from trainers.core.config import load_config
    from trainers.core.losses import unwrap
    from trainers.methods.lora_ssd import LoRASSD, adapters_off

    out, _ = run(LoRASSD, tiny_dir, tmp_path / "first", style_lora=str(style_lora), lora_rank=2, lora_alpha=4.0,
                 lr=5e-2)
    opts = {**SMALL, "teacher": str(tiny_dir), "style_lora": str(style_lora), "lora_rank": 2, "lora_alpha": 4.0,
            "pair_cache": str(tmp_path / "first" / "pairs-style.safetensors"), "lambda_layout": 3.0}
    fresh = LoRASSD(load_config(LoRASSD.config_cls, None, {**opts, "run_dir": str(tmp_path / "new")}).validate())
    fresh.setup(Accel())
    assert fresh.student_loss(fresh.batch(0, 0, Accel()), 0)[1]["layout"] < 1e-4  # B = 0: the plain student itself
    method = LoRASSD(load_config(LoRASSD.config_cls, None, {**opts, "run_dir": str(tmp_path / "go"), "lora_init": str(out)}).validate())
    method.setup(Accel())
    student = unwrap(method.nets["student"])
    lora = [p for n, p in student.named_parameters() if "lora_" in n]
    batch = method.batch(0, 0, Accel())
    styled = method.student_sample(batch).detach()
    loss, logs = method.student_loss(batch, 0)
    assert logs["layout"] > 0 and "sd" in logs and "fm" in logs
    # the LoRA is on and trainable again after the LoRA-off pass
    assert all(p.requires_grad for p in lora) and torch.equal(method.student_sample(batch).detach(), styled)
    again = method.batch(0, 0, Accel())  # the same draws: the score term's t and noise come from its generator
    distill, _ = method.distillation_loss(method.student_sample(again), again, 0)
    assert loss.item() == pytest.approx(distill.item() + 3.0 * logs["layout"], rel=1e-5)
    # descending the term alone moves the styled sample's layout back toward the plain one's
    opt = torch.optim.Adam(lora, lr=1e-2)
    first = logs["layout"]
    for _ in range(5):
        opt.zero_grad()
        with torch.no_grad(), adapters_off(student):
            plain = method.student_sample(batch)
        keep, last = method.layout(method.student_sample(batch), plain)
        keep.backward()
        opt.step()
    assert last["layout"] < first
    with pytest.raises(ValueError, match="layout_window"):
        load_config(LoRASSD.config_cls, None, {**opts, "run_dir": str(tmp_path / "x"), "layout_window": 4}).validate()
    # another decoder (a pipeline folder's codec here): loaded frozen, not the teacher's VAE object
    other = LoRASSD(load_config(LoRASSD.config_cls, None, {**opts, "run_dir": str(tmp_path / "d"),
                                                          "layout_decoder": str(tiny_dir)}).validate())
    other.setup(Accel())
    assert other.layout.vae is not other.teacher["vae"] and not any(p.requires_grad for p in other.layout.vae.parameters())
    with pytest.raises(ValueError, match="layout_decoder"):
        load_config(LoRASSD.config_cls, None, {**opts, "run_dir": str(tmp_path / "y"), "layout_decoder": "nope"}).validate()


class Accel:  # just what Method.setup / batch read
    device, process_index, is_main_process = torch.device("cpu"), 0, True

    def wait_for_everyone(self):
        pass


# ---- ControlNet-SSD ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cn_models(tmp_path_factory):
    """The SD-like tiny teacher (mid block), its ControlNet, and a block-removed (mid-less) student pipeline."""
    from sdxs_core.testkit import write_tiny_controlnet
    from trainers.core.components import load_components
    from trainers.core.pipeline_folder import save_pipeline_folder
    from trainers.core.student import build_student
    from trainers.miniature.testing import write_tiny_teacher

    root = tmp_path_factory.mktemp("cn")
    teacher = write_tiny_teacher(root / "teacher")
    teacher_cn = write_tiny_controlnet(teacher, root / "teacher-cn")
    components = load_components(teacher, "cpu")
    unet, _ = build_student("block_removed", components["unet"])
    student = save_pipeline_folder(root / "student", components, unet=unet)
    return {"teacher": teacher, "teacher_cn": teacher_cn, "student": student, "pairs": root / "pairs.safetensors"}


def cn_run(cn_models, run_dir, stage, **kw):
    from trainers.methods.controlnet_kd import ControlNetKD
    from trainers.methods.controlnet_ssd import ControlNetSSD

    return run(ControlNetKD if stage == "kd" else ControlNetSSD, cn_models["teacher"], run_dir,
               student=str(cn_models["student"]), teacher_controlnet=str(cn_models["teacher_cn"]),
               pair_cache=str(cn_models["pairs"]), **kw)


def zero_convs(cn) -> list[torch.Tensor]:
    return [b.weight for b in cn.controlnet_down_blocks] + [cn.controlnet_mid_block.weight]


def test_controlnet_kd_then_ssd(tmp_path, cn_models):
    from diffusers import ControlNetModel, UNet2DConditionModel
    from PIL import Image

    from sdxs_core import load_engine
    from sdxs_core.control import extract
    from trainers.core.losses import unwrap

    student0 = UNet2DConditionModel.from_pretrained(cn_models["student"] / "unet").state_dict()
    teacher_cn0 = ControlNetModel.from_pretrained(cn_models["teacher_cn"]).state_dict()

    def frozen_parts_unchanged(method):
        assert method.student_unet.mid_block is None
        assert all(torch.equal(v, student0[k]) for k, v in method.student_unet.state_dict().items())
        assert all(torch.equal(v, teacher_cn0[k]) for k, v in method.teacher_cn.state_dict().items())

    # stage kd: decoder-only feature KD of (U-Net + ControlNet) pairs; the new ControlNet's zero convs move
    kd_out, kd = cn_run(cn_models, tmp_path / "kd", stage="kd")
    frozen_parts_unchanged(kd)
    assert kd.block_map == {"unet.up_blocks.1": "unet.up_blocks.0", "unet.up_blocks.2": "unet.up_blocks.1"}
    assert any(w.abs().sum() > 0 for w in zero_convs(unwrap(kd.nets["controlnet"])))
    log = (tmp_path / "kd" / "log.jsonl").read_text()
    assert '"controlnet/fkd"' in log and '"controlnet/okd"' in log

    # stage ssd from the kd output: only the student ControlNet (and the online DM) train
    out, method = cn_run(cn_models, tmp_path / "ssd", stage="ssd", controlnet=str(kd_out), fresh_noise_ratio=0.5,
                         control_type="none")  # the random tiny teacher's dim samples have no canny edges
    frozen_parts_unchanged(method)
    kd_cn = ControlNetModel.from_pretrained(kd_out).state_dict()
    assert any(not torch.equal(v, kd_cn[k]) for k, v in unwrap(method.nets["controlnet"]).state_dict().items())
    offline0 = UNet2DConditionModel.from_pretrained(cn_models["teacher"] / "unet").state_dict()
    assert all(torch.equal(v, offline0[k]) for k, v in method.teacher["unet"].state_dict().items())
    assert any(not torch.equal(v, offline0[k]) for k, v in unwrap(method.nets["online_dm"]).state_dict().items())
    assert method.online_c.controlnet is method.offline_c.controlnet is method.teacher_cn
    made = json.loads((out / "train_info.json").read_text())  # provenance: where it started, its fresh noise
    assert (made["stage"], made["init"], made["fresh_noise_ratio"]) == ("ssd", str(kd_out), 0.5)
    assert json.loads((kd_out / "train_info.json").read_text())["init"] is None

    # fresh noise: ratio 0 keeps the pair's noise, 1 replaces every input
    method.config.fresh_noise_ratio = 0.0
    batch = method.batch(0, 0, Accel())
    assert torch.equal(batch["student_noise"], batch["noise"])
    method.config.fresh_noise_ratio = 1.0
    batch = method.batch(0, 0, Accel())
    assert all(not torch.equal(a, b) for a, b in zip(batch["student_noise"], batch["noise"]))

    # the control image of a training sample is the live loop's: extract() on the teacher's decoded
    # sample, then the engine's prepare_control
    engine = load_engine(cn_models["student"], controlnet=out, device="cpu")
    i, j = int(batch["index"][0]), 0
    teacher_image = load_engine(cn_models["teacher"], device="cpu").decode(method.pairs["latents"][i:i + 1])
    pil = Image.fromarray((teacher_image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    live = extract("none", pil, size=64).image
    assert live.std() > 0
    # the two decodes run in different engines (the app's is traced), so a pixel on a rounding edge may
    # land one 8-bit level away; any other preprocessing would move many pixels by more
    diff = (batch["control"][j:j + 1] - engine.prepare_control(live, 1, 64, 64)).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 0.01

    # the output folder loads next to the student and its control image changes the image
    plain = engine.generate("a b", seed=0, output_type="np").images
    controlled = engine.generate("a b", seed=0, control_image=live, output_type="np").images
    assert controlled.shape == (1, 64, 64, 3) and abs(controlled - plain).max() > 0


def test_controlnet_kd_on_world_ground_truth_maps(tmp_path, cn_models):
    from trainers.core.config import load_config
    from trainers.methods.controlnet_ssd import ControlNetSSD, ControlNetSSDConfig

    _, method = cn_run(cn_models, tmp_path / "kd", stage="kd", control_source="world", control_type="edges",
                       max_steps=1, num_pairs=2)
    batch = method.batch(0, 0, Accel())
    i = int(batch["index"][0])
    assert torch.equal(batch["control"][0], torch.as_tensor(method.pairs["maps"][i]).permute(2, 0, 1).float() / 255)
    assert method.pairs["prompts"][i].startswith("a")  # world captions
    # SSD needs the teacher's own sample for each noise (a render has none), and fresh captions would not
    # match the pair's control image: ControlNet-SSD has neither option, rather than refusing them
    for option, value in (("control_source", "world"), ("fresh_ratio", 0.5), ("stage", "kd")):
        with pytest.raises(ValueError, match=f"unknown option '{option}' for controlnet_ssd"):
            load_config(ControlNetSSDConfig, None, {"teacher": str(cn_models["teacher"]), option: value,
                                                    "teacher_controlnet": str(cn_models["teacher_cn"])})
    assert ControlNetSSD.config_cls is ControlNetSSDConfig


def test_controlnet_teacher_trains_on_world_ground_truth_and_loads(tmp_path, cn_models):
    from sdxs_core import load_engine
    from trainers.methods.controlnet_teacher import ControlNetTeacher

    out, method = run(ControlNetTeacher, cn_models["teacher"], tmp_path / "t", control_type="depth", num_images=2,
                      max_steps=1, val_steps=1)
    assert len(method.pairs["prompts"]) == 2 and method.pairs["maps"].shape == (2, 64, 64, 3)
    engine = load_engine(cn_models["teacher"], controlnet=out, device="cpu")
    images = engine.generate("a b", seed=0, control_image=method.pairs["maps"][0], output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def test_lora_teacher_exports_a_lora_that_lora_ssd_accepts(tmp_path, tiny_dir):
    from sdxs_core import load_engine
    from trainers.methods.lora_teacher import LoRATeacher

    out, _ = run(LoRATeacher, tiny_dir, tmp_path / "t", num_images=2, max_steps=1)
    engine = load_engine(tiny_dir, lora=out, device="cpu")
    assert engine.generate("a b", seed=0, num_inference_steps=2, output_type="np").images.shape == (1, 64, 64, 3)


def test_lora_teacher_confined_to_blocks_writes_only_their_weights(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    from trainers.methods.lora_teacher import LoRATeacher

    out, _ = run(LoRATeacher, tiny_dir, tmp_path / "t", num_images=2, max_steps=1, lora_targets=["conv1", "conv2"],
                 lora_blocks=["up_blocks.1"])
    keys = list(load_file(str(out / "pytorch_lora_weights.safetensors")))
    assert keys and all(k.startswith("unet.up_blocks.1.") for k in keys)  # conv1/2 of the other blocks left alone
    assert json.loads((out / "train_info.json").read_text())["lora_blocks"] == ["up_blocks.1"]
    with pytest.raises(ValueError, match="inside lora_blocks"):
        run(LoRATeacher, tiny_dir, tmp_path / "typo", num_images=2, max_steps=1, lora_blocks=["up_block.1"])
