"""Each training method end-to-end for a few steps on tiny random teachers; its output folder loads
through ``sdxs_core.load_engine`` like any user model."""

import torch

SMALL = dict(batch_size=2, num_pairs=4, teacher_steps=2, num_prompts=8, max_steps=2, checkpoint_every=100,
             log_every=1, val_prompts=["a b"], lr=1e-3)


def run(method_cls, teacher, run_dir, **kw):
    from trainers.core.config import load_config
    from trainers.core.loop import train

    torch.set_num_threads(1)
    cfg = load_config(method_cls.config_cls, None, {**SMALL, "teacher": str(teacher), "run_dir": str(run_dir), **kw})
    method = method_cls(cfg.validate())
    return train(cfg, method), method


def loads_and_generates(folder, steps=1):
    from sdxs_core import load_engine

    engine = load_engine(folder, device="cpu")
    images = engine.generate("a b", seed=0, num_inference_steps=steps, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and images.std() > 0
    return engine


def test_ssd_trains_online_dm_not_offline_and_exports_one_step_student(tmp_path, tiny_dir):
    from trainers.core.components import load_components
    from trainers.core.losses import unwrap
    from trainers.core.noise_schedule import NoiseSchedule, one_step
    from trainers.methods.ssd import SSD

    out, method = run(SSD, tiny_dir, tmp_path / "ssd", student_every=1)
    initial = load_components(tiny_dir, "cpu")["unet"].state_dict()
    online = unwrap(method.nets["online_dm"]).state_dict()
    offline = method.teacher["unet"].state_dict()
    assert any(not torch.equal(online[k], initial[k]) for k in initial)
    assert all(torch.equal(offline[k], initial[k]) for k in initial)
    assert (tmp_path / "ssd" / "samples" / "step-000002.png").is_file()

    # the exported pipeline's one engine step is exactly the training-time generator
    engine = loads_and_generates(out)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    got = engine.generate("a b", noise=noise, output_type="latent").images
    embeds = engine.encode_prompt(["a b"])
    with torch.no_grad():
        want = one_step(engine.unet, noise, embeds, NoiseSchedule(engine.scheduler.config))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_ssd_student_gradient_comes_from_fm_only_when_alpha_zero(tmp_path, tiny_dir):
    from trainers.core.config import load_config
    from trainers.methods.ssd import SSD

    class Accel:  # just what Method.setup/batch read
        device, process_index, is_main_process = torch.device("cpu"), 0, True

        def wait_for_everyone(self):
            pass

    base = {**SMALL, "teacher": str(tiny_dir), "run_dir": str(tmp_path)}
    cfg = load_config(SSD.config_cls, None, {**base, "alpha_start": 0.0, "alpha_end": 0.0}).validate()
    method = SSD(cfg)
    method.setup(Accel())
    batch = method.batch(0, 0, Accel())
    _, logs = method.student_loss(batch, 0)
    assert logs["sd"] == 0.0 and logs["fm"] > 0
    method.alpha = lambda step: 0.9  # with alpha > 0 and a fake score != real score: a score gradient
    with torch.no_grad():
        for p in method.nets["online_dm"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.lambda_fm = lambda step: 0.0
    loss, logs = method.student_loss(batch, 0)
    loss.backward()
    grad = sum(p.grad.abs().sum() for p in method.nets["student"].parameters() if p.grad is not None)
    assert logs["sd"] > 0 and grad > 0


def test_ssd_fresh_rows_get_new_noise_and_captions_and_only_the_score_term(tmp_path, tiny_dir):
    from trainers.core.config import load_config
    from trainers.core.prompts import encode_prompts
    from trainers.methods.ssd import SSD

    class Accel:
        device, process_index, is_main_process = torch.device("cpu"), 0, True

        def wait_for_everyone(self):
            pass

    cfg = {**SMALL, "teacher": str(tiny_dir), "run_dir": str(tmp_path), "batch_size": 4, "fresh_ratio": 0.5,
           "alpha_start": 0.0, "alpha_end": 0.0, "anneal": "constant"}
    method = SSD(load_config(SSD.config_cls, None, cfg).validate())
    method.setup(Accel())
    batch = method.batch(3, 0, Accel())
    idx, pairs = batch["index"], method.pairs
    assert batch["paired"] == 2
    assert torch.equal(batch["noise"][:2], pairs["noise"][idx[:2]])  # paired rows: the pair's noise and caption
    assert not any(torch.equal(batch["noise"][i], pairs["noise"][j]) for i in (2, 3) for j in range(len(pairs["noise"])))
    pool = encode_prompts(method.teacher["tokenizer"], method.teacher["text_encoder"], method.prompts, "cpu")
    for row in batch["embeds"][2:]:  # fresh rows: a caption from the whole prompt pool
        assert any(torch.allclose(row, e) for e in pool)
    again = method.batch(3, 0, Accel())  # derived from the step's seed: a resumed run draws the same
    assert torch.equal(again["noise"], batch["noise"]) and torch.equal(again["embeds"], batch["embeds"])
    # alpha 0: the loss is FM alone, on the paired rows only
    with torch.no_grad():
        x0 = method.student_sample(batch)
        want, _ = method.fm(x0[:2], batch["latents"][:2], batch["embeds"][:2])
        _, logs = method.student_loss(batch, 0)
    assert abs(logs["fm"] - want.item()) < 1e-5
    method.config.fresh_ratio = 1.0
    _, logs = method.student_loss(method.batch(3, 0, Accel()), 0)
    assert logs["fm"] == 0.0 and logs["sd"] == 0.0


def test_ssd_with_every_row_fresh_samples_no_pairs_and_trains(tmp_path, tiny_dir, monkeypatch):
    import trainers.core.method as core_method
    from trainers.methods.ssd import SSD

    class Accel:
        device, process_index, is_main_process = torch.device("cpu"), 0, True

    def no_pairs(*args, **kwargs):
        raise AssertionError("teacher pairs sampled although no row keeps one")

    monkeypatch.setattr(core_method, "pair_cache", no_pairs)
    out, method = run(SSD, tiny_dir, tmp_path / "ssd", fresh_ratio=1.0, batch_size=3, alpha_start=0.5, alpha_end=0.5)
    assert not method.pairs_needed() and not hasattr(method, "pairs")
    assert not list((tmp_path / "ssd").glob("pairs*.safetensors"))
    batch = method.batch(5, 0, Accel())
    assert batch["paired"] == 0 and batch["noise"].shape == (3, 4, 8, 8) and batch["embeds"].shape[0] == 3
    again, other = method.batch(5, 0, Accel()), method.batch(6, 0, Accel())
    assert torch.equal(again["noise"], batch["noise"]) and not torch.equal(other["noise"], batch["noise"])
    _, logs = method.student_loss(batch, 0)
    assert logs["fm"] == 0.0 and logs["sd"] > 0  # the score term alone
    loads_and_generates(out)
    # one paired row left (ratio 0.6 of 3 rounds to 2 fresh): the pairs are needed again
    method.config.fresh_ratio = 0.6
    assert method.fresh_rows() == 2 and method.pairs_needed()


def test_fm_warmup_caches_pairs_and_exports(tmp_path, mid_teacher_dir):
    from trainers.methods.fm_warmup import FMWarmup

    pairs = tmp_path / "pairs.safetensors"
    out, method = run(FMWarmup, mid_teacher_dir, tmp_path / "fm", pair_cache=str(pairs))
    assert pairs.is_file() and method.student_info["student"] == "block_removed"
    stamp = pairs.stat().st_mtime_ns
    run(FMWarmup, mid_teacher_dir, tmp_path / "fm2", pair_cache=str(pairs), max_steps=1)
    assert pairs.stat().st_mtime_ns == stamp  # reused, not regenerated
    engine = loads_and_generates(out)
    assert engine.unet.mid_block is None


def test_mse_baseline_exports(tmp_path, tiny_dir):
    from trainers.methods.mse_baseline import MSEBaseline

    out, _ = run(MSEBaseline, tiny_dir, tmp_path / "mse", student="copy")
    loads_and_generates(out)


def test_block_kd_removes_blocks_and_exports(tmp_path, mid_teacher_dir):
    from trainers.methods.block_kd import BlockKD

    out, method = run(BlockKD, mid_teacher_dir, tmp_path / "kd")
    assert method.block_map == {"down_blocks.0": "down_blocks.0", "up_blocks.1": "up_blocks.0", "up_blocks.2": "up_blocks.1"}
    log = (tmp_path / "kd" / "log.jsonl").read_text()
    assert '"student/fkd"' in log and '"student/okd"' in log
    engine = loads_and_generates(out, steps=2)
    assert engine.unet.mid_block is None and len(engine.unet.down_blocks) == 2


def test_block_kd_on_world_renders_uses_train_split_captions(tmp_path, mid_teacher_dir):
    """x0_source=world: x0 are VAE latents of world renders (train split), not teacher pairs."""
    from trainers.methods.block_kd import BlockKD
    from trainers.miniature import world

    out, method = run(BlockKD, mid_teacher_dir, tmp_path / "kd", x0_source="world", num_images=12, max_steps=1)
    assert len(method.pairs["prompts"]) == 12 and method.pairs["latents"].shape[0] == 12
    assert method.pairs["prompts"] == list(world.render_batch(0, 12)["captions"])
    assert not set(method.pairs["prompts"]) & set(world.eval_prompts(200))
    assert not (tmp_path / "kd" / "pairs.safetensors").exists()  # no teacher sampling needed
    assert (out / "unet" / "config.json").is_file()


def test_block_kd_distils_the_unconditional_branch_and_weighs_by_timestep(tmp_path, mid_teacher_dir):
    """uncond_prob of each batch sees the empty prompt (the branch CFG sampling of the student uses);
    kd_weighting=v hands KDLoss the schedule's per-sample weights."""
    from trainers.methods.block_kd import BlockKD

    _, method = run(BlockKD, mid_teacher_dir, tmp_path / "kd", max_steps=1, uncond_prob=0.5, kd_weighting="v")
    seen = {}

    def spy(xt, t, embeds, weight):
        seen.update(t=t, embeds=embeds, weight=weight)
        return xt.sum(), {}
    method.kd = spy
    embeds = torch.randn(64, *method.uncond.shape[1:])
    batch = {"latents": torch.randn(64, 4, 8, 8), "embeds": embeds, "generator": torch.Generator().manual_seed(0)}
    method.loss(batch, 0)
    dropped = (seen["embeds"] == method.uncond).flatten(1).all(1)
    kept = (seen["embeds"] == embeds).flatten(1).all(1)
    assert torch.all(dropped ^ kept) and 16 < dropped.sum() < 48
    assert torch.equal(seen["weight"], method.schedule.kd_weight(seen["t"], "v")) and seen["weight"].std() > 0
    method.config.uncond_prob, method.config.kd_weighting = 0.0, "eps"
    method.loss(batch, 0)
    assert torch.equal(seen["embeds"], embeds) and torch.all(seen["weight"] == 1)


def test_block_kd_options_are_checked(tiny_dir):
    from trainers.core.config import load_config
    from trainers.methods.block_kd import KDConfig

    cfg = load_config(KDConfig, None, {"teacher": str(tiny_dir), "kd_weighting": "snr", "uncond_prob": 1.5})
    errors = " ".join(cfg.errors())
    assert "kd_weighting='snr'" in errors and "uncond_prob=1.5" in errors


def test_decoder_on_perturbed_world_latents_targets_the_vae_decode_of_what_it_sees(tmp_path, mid_teacher_dir):
    """latent_source=world + latent_noise: the decoder's input is a perturbed world latent and its
    target is the teacher VAE's decode of that same perturbed latent (not of the clean one)."""
    from types import SimpleNamespace

    from trainers.methods.decoder import DecoderDistill

    out, method = run(DecoderDistill, mid_teacher_dir, tmp_path / "dec", decoder_size="tiny", latent_source="world",
                      num_images=6, latent_noise=0.5, max_steps=1)
    assert method.pairs["latents"].shape[0] == 6 and not (tmp_path / "dec" / "pairs.safetensors").exists()
    assert method.targets is None  # perturbed latents are decoded afresh every batch
    batch = method.batch(3, 0, SimpleNamespace(process_index=0))
    clean = method.pairs["latents"][batch["index"]]
    assert not torch.allclose(batch["latents"], clean)
    assert torch.allclose(batch["target"], method.target(batch["latents"]), atol=1e-6)
    assert not torch.allclose(batch["target"], method.target(clean), atol=1e-3)
    again = method.batch(3, 0, SimpleNamespace(process_index=0))  # a resumed run draws the same perturbation
    assert torch.equal(again["latents"], batch["latents"])
    assert (out / "vae" / "config.json").is_file()


def test_decoder_world_style_mixed_encodes_pastel_renders_of_the_same_scenes(tmp_path, mid_teacher_dir):
    """world_style=mixed: each scene is drawn in one style; the plain scenes' latents are the plain run's,
    the pastel scenes' are their pastel renders' (so a style LoRA's latents have decodes to learn from)."""
    from trainers.methods.decoder import DecoderDistill
    from trainers.miniature import world

    _, plain = run(DecoderDistill, mid_teacher_dir, tmp_path / "p", decoder_size="tiny", latent_source="world",
                   num_images=8, max_steps=1)
    _, mixed = run(DecoderDistill, mid_teacher_dir, tmp_path / "m", decoder_size="tiny", latent_source="world",
                   num_images=8, max_steps=1, world_style="mixed")
    pastel = torch.tensor([s.style == "pastel" for s in world.render_batch(mixed.config.seed, 8, "mixed")["specs"]])
    assert 0 < pastel.sum() < 8 and mixed.pairs["prompts"] == plain.pairs["prompts"]  # same scenes, both styles
    differ = (mixed.pairs["latents"] - plain.pairs["latents"]).flatten(1).abs().amax(1) > 1e-4
    assert torch.equal(differ, pastel)


def test_decoder_learns_on_the_students_own_latents_and_continues_a_decoder(tmp_path, mid_teacher_dir, tiny_dir,
                                                                          tiny_controlnet_dir, tiny_lora_file):
    """student: the world latents plus the one-step student's latents on the same scenes, scene i made
    by variant i mod 3 (text only, the ControlNet on the scene's canny map, the LoRA), seed i; the
    target stays the VAE's decode. decoder_init: the decoder starts from the given one."""
    import shutil

    from diffusers import AutoencoderTiny

    from sdxs_core import load_engine
    from sdxs_core.control import extract
    from trainers.core.config import load_config
    from trainers.methods.decoder import DecoderDistill
    from trainers.miniature import world

    controlnet = shutil.copytree(tiny_controlnet_dir, tmp_path / "cn-canny")  # its type from the folder name
    first, _ = run(DecoderDistill, mid_teacher_dir, tmp_path / "dec", decoder_size="tiny", latent_source="world",
                   num_images=6, max_steps=1)
    out, method = run(DecoderDistill, mid_teacher_dir, tmp_path / "dec2", decoder_size="tiny", latent_source="world",
                      num_images=6, max_steps=1, student=str(tiny_dir), student_controlnets=[str(controlnet)],
                      student_loras=[str(tiny_lora_file)], decoder_init=str(first))
    latents, prompts = method.pairs["latents"], method.pairs["prompts"]
    real = world.render_batch(method.config.seed, 6)
    assert latents.shape[0] == 12 and prompts == list(real["captions"]) * 2
    engine = load_engine(tiny_dir, device="cpu", graphs=False)
    text = engine.generate(prompts[3], seed=3, output_type="latent").images
    engine.set_controlnet(load_engine(tiny_dir, controlnet=controlnet, device="cpu").controlnet)
    canny = engine.generate(prompts[4], seed=4, control_image=extract("canny", real["images"][4]).image,
                            output_type="latent").images
    engine.set_controlnet(None)
    engine.load_lora(str(tiny_lora_file))
    styled = engine.generate(prompts[5], seed=5, output_type="latent").images
    for i, want in ((9, text), (10, canny), (11, styled)):
        torch.testing.assert_close(latents[i:i + 1], want.float(), atol=1e-4, rtol=1e-4)  # batched vs alone
    assert not torch.allclose(latents[10], engine.generate(prompts[4], seed=4, output_type="latent").images[0])
    assert (out / "vae" / "config.json").is_file()

    class Accel:
        device, process_index, is_main_process = torch.device("cpu"), 0, True

    cfg = load_config(DecoderDistill.config_cls, None, {**SMALL, "teacher": str(mid_teacher_dir), "run_dir": str(tmp_path / "d3"),
                                                        "latent_source": "world", "num_images": 2, "decoder_init": str(first)})
    continued = DecoderDistill(cfg.validate())
    continued.setup(Accel())
    init = AutoencoderTiny.from_pretrained(first / "vae").state_dict()
    assert all(torch.equal(v, init[k]) for k, v in continued.nets["decoder"].ae.state_dict().items())


def test_decoder_student_options_are_checked_up_front(tmp_path, mid_teacher_dir):
    from trainers.core.config import load_config
    from trainers.methods.decoder import DecoderDistill

    cfg = load_config(DecoderDistill.config_cls, None, {
        **SMALL, "teacher": str(mid_teacher_dir), "run_dir": str(tmp_path), "latent_source": "pairs",
        "student": str(tmp_path / "none"), "student_loras": [str(tmp_path / "x.safetensors")],
        "decoder_init": str(tmp_path / "nope"), "lambda_edge": -1, "world_style": "sepia"})
    errors = "\n".join(cfg.errors())
    for bit in ("set latent_source: world", "no model_index.json", "x.safetensors' does not exist", "decoder_init=",
                "lambda_edge=-1", "world_style='sepia'"):
        assert bit in errors
    cfg = load_config(DecoderDistill.config_cls, None, {**SMALL, "teacher": str(mid_teacher_dir), "run_dir": str(tmp_path),
                                                        "latent_source": "pairs", "world_style": "mixed"})
    assert "world_style='mixed' styles the world renders: set latent_source: world" in cfg.errors()


def test_decoder_distillation_exports_autoencoder_tiny(tmp_path, mid_teacher_dir):
    from diffusers import AutoencoderTiny

    from trainers.methods.decoder import DecoderDistill

    out, _ = run(DecoderDistill, mid_teacher_dir, tmp_path / "dec", decoder_size="tiny", ema_decay=0.9, lambda_edge=1.0)
    AutoencoderTiny.from_pretrained(out / "vae")
    engine = loads_and_generates(out, steps=2)
    assert type(engine.vae).__name__ == "AutoencoderTiny"
    log = (tmp_path / "dec" / "log.jsonl").read_text()
    assert '"decoder/g_gan"' in log and '"discriminator/d_loss"' in log and '"decoder/edge_l1"' in log
