"""How closely a student U-Net follows its teacher, timestep by timestep (the block-removal KD check).

A sampler decides a scene's layout at high noise, where a small epsilon error is a large error in the
predicted image: the per-t table shows what an average KD loss hides. For each t, on the VAE latents
of held-out world scenes (captions never trained on) noised with shared noise:

- ``eps_mse``: student vs teacher epsilon (what plain output KD minimises);
- ``x0_mse``: student vs teacher predicted x0 (what the sampler builds on);
- ``teacher_x0_err`` / ``student_x0_err``: each model's predicted x0 vs the true latent (the teacher's is
  the floor a perfect copy of it would score).

    python -m benchmarks.kd_fidelity --teacher assets/miniature/teacher --students runs/gpu/block_kd/final
"""

import argparse
import time
from pathlib import Path

from benchmarks.results_io import command_line, write_results
from sdxs_core.paths import RESULTS, ROOT

TIMESTEPS = (50, 200, 400, 600, 800, 950, 999)


def fidelity(teacher: dict, student_unet, n: int = 256, timesteps=TIMESTEPS, seed: int = 0, batch: int = 64) -> list[dict]:
    """Rows ``{t, eps_mse, x0_mse, teacher_x0_err, student_x0_err}`` for one student. ``teacher``: the
    components of ``trainers.core.components.load_components``."""
    import torch

    from trainers.core.noise_schedule import NoiseSchedule, unet_forward
    from trainers.core.prompts import encode_prompts
    from trainers.methods.controlnets import world_data
    from trainers.miniature import world
    from trainers.miniature.evaluate import reference_set

    schedule = NoiseSchedule(teacher["scheduler"].config)
    captions = world.eval_prompts(n, seed)
    x0 = world_data(teacher["vae"], n, seed, None, chunk=batch, real=reference_set(captions, 3_000_000 + seed))["latents"]
    rows = []
    with torch.inference_mode():
        embeds = encode_prompts(teacher["tokenizer"], teacher["text_encoder"], captions, "cpu")
        g = torch.Generator().manual_seed(seed)
        for tv in timesteps:
            sums = dict.fromkeys(("eps_mse", "x0_mse", "teacher_x0_err", "student_x0_err"), 0.0)
            for s in range(0, n, batch):
                z, e = x0[s:s + batch], embeds[s:s + batch]
                t = torch.full((len(z),), tv)
                xt = schedule.add_noise(z, torch.randn(z.shape, generator=g), t)
                eps_t, eps_s = unet_forward(teacher["unet"], xt, t, e), unet_forward(student_unet, xt, t, e)
                x0_t, x0_s = schedule.pred_x0(eps_t, xt, t), schedule.pred_x0(eps_s, xt, t)
                for key, a, b in (("eps_mse", eps_s, eps_t), ("x0_mse", x0_s, x0_t), ("teacher_x0_err", x0_t, z),
                                  ("student_x0_err", x0_s, z)):
                    sums[key] += float((a - b).pow(2).sum())
            rows.append({"t": tv, **{k: round(v / x0.numel(), 5) for k, v in sums.items()}})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="assets/miniature/teacher")
    parser.add_argument("--students", nargs="+", required=True, help="pipeline folders of student U-Nets")
    parser.add_argument("--n", type=int, default=256, help="held-out scenes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "kd_fidelity.json"))
    args = parser.parse_args(argv)

    import os

    import torch

    from trainers.core.components import load_components
    from trainers.core.student import build_student

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    teacher = load_components(args.teacher, "cpu")
    report = {"teacher": args.teacher, "n_images": args.n, "students": {}}
    for folder in args.students:
        unet = build_student(folder, teacher["unet"])[0].eval()
        rows = fidelity(teacher, unet, args.n)
        report["students"][os.path.relpath(Path(folder).resolve(), ROOT)] = rows
        print(f"\n{folder}\n{'t':>5} {'eps_mse':>9} {'x0_mse':>8} {'teacher_x0_err':>15} {'student_x0_err':>15}")
        for r in rows:
            print(f"{r['t']:>5} {r['eps_mse']:>9.5f} {r['x0_mse']:>8.4f} {r['teacher_x0_err']:>15.4f} {r['student_x0_err']:>15.4f}")
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out, report, command_line("benchmarks.kd_fidelity", argv))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
