import random
from dataclasses import replace

import numpy as np
import pytest

from trainers.miniature import world


@pytest.fixture(scope="module")
def batch():
    return world.render_batch(11, 96, style="mixed")


def test_batch_layout(batch):
    n = 96
    assert batch["images"].shape == (n, 64, 64, 3) and batch["images"].dtype == np.uint8
    assert batch["edges"].shape == (n, 64, 64) and batch["edges"].dtype == np.uint8
    assert set(np.unique(batch["edges"])) <= {0, 255}
    assert batch["depth"].shape == (n, 64, 64) and batch["depth"].dtype == np.float32
    assert batch["depth"].min() >= 0 and batch["depth"].max() <= 1
    assert len(batch["captions"]) == len(batch["specs"]) == n
    assert {s.style for s in batch["specs"]} == {"plain", "pastel"}
    assert {len(s.objects) for s in batch["specs"]} == {1, 2}


def test_deterministic_from_seed_and_independent_of_batch_length():
    a = world.render_batch(5, 12, style="mixed")
    b = world.render_batch(5, 12, style="mixed")
    head = world.render_batch(5, 4, style="mixed")
    other = world.render_batch(6, 12, style="mixed")
    for key in ("images", "edges", "depth", "masks"):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key][:4], head[key])
    assert a["captions"] == b["captions"] and a["captions"][:4] == head["captions"]
    assert a["captions"] != other["captions"]
    assert not np.array_equal(a["images"], other["images"])


def _random_spec(rng: random.Random) -> world.SceneSpec:
    background = rng.choice(list(world.BACKGROUNDS))
    objects = tuple(world.ObjectSpec(rng.choice(world.SHAPES), rng.choice(list(world.COLOURS))) for _ in range(rng.choice([1, 2])))
    if len(objects) == 1:
        return world.SceneSpec(objects, background, position=rng.choice(list(world.POSITIONS)))
    return world.SceneSpec(objects, background, relation=rng.choice(list(world.RELATIONS)))


def test_caption_round_trip_for_random_and_rendered_specs():
    rng = random.Random(0)
    specs = [_random_spec(rng) for _ in range(1000)] + world.sample_specs(3, 1000, "mixed", "train")[0]
    for spec in specs:
        text = world.caption(spec)
        assert world.parse_caption(text) == spec.attributes(), text
        assert world.caption(world.parse_caption(text)) == text


def test_caption_wording():
    spec = world.SceneSpec((world.ObjectSpec("triangle", "red"), world.ObjectSpec("circle", "blue")), "yellow", relation="above")
    assert world.caption(spec) == "a red triangle above a blue circle on a yellow background"
    one = world.SceneSpec((world.ObjectSpec("star", "orange"),), "black", position="left", style="pastel")
    assert world.caption(one) == "an orange star on the left on a black background"
    assert world.caption(one) == world.caption(replace(one, style="plain"))  # style is never stated
    assert world.parse_caption("An orange STAR on the left on a black background.") == one.attributes()


@pytest.mark.parametrize("text", ["a red triangle", "a red moon on the left on a black background", "", "a red star left of a blue star on a gray background"])
def test_parse_caption_rejects_non_captions(text):
    with pytest.raises(ValueError, match="not a miniature-world caption"):
        world.parse_caption(text)


def test_held_out_combinations_respect_the_split():
    train, _ = world.sample_specs(1, 3000, "mixed", "train")
    held, _ = world.sample_specs(1, 1000, "mixed", "eval")
    assert not any(world.is_held_out(s) for s in train)
    assert all(world.is_held_out(s) for s in held)
    train_keys = {s.combination() for s in train}
    assert not train_keys & {s.combination() for s in held}
    # Every single attribute value still appears in training.
    for values, field in [(world.SHAPES, "shape"), (world.COLOURS, "colour")]:
        for slot in (0, 1):
            seen = {getattr(s.objects[slot], field) for s in train if len(s.objects) > slot}
            assert seen == set(values)
    assert {s.position for s in train} - {None} == set(world.POSITIONS)
    assert {s.relation for s in train} - {None} == set(world.RELATIONS)
    assert {s.background for s in train} == set(world.BACKGROUNDS)


def test_held_out_share_and_mirrored_captions_share_a_split():
    one_train, two_train = world.combinations("train")
    one_eval, two_eval = world.combinations("eval")
    share = (len(one_eval) + len(two_eval)) / (len(one_eval) + len(two_eval) + len(one_train) + len(two_train))
    assert 0.08 < share < 0.12
    for s1, c1, r, s2, c2 in two_eval[:200]:
        mirrored = (s2, c2, world.INVERSE_RELATION[r], s1, c1)
        assert mirrored in two_eval and mirrored not in two_train


def test_eval_prompts_are_held_out_and_deterministic():
    prompts = world.eval_prompts(64, seed=3)
    assert prompts == world.eval_prompts(64, seed=3)
    assert all(world.is_held_out(world.parse_caption(p)) for p in prompts)


def test_object_never_shares_the_background_colour(batch):
    specs = world.sample_specs(2, 2000, "plain", "train")[0]
    assert all(o.colour != s.background for s in specs for o in s.objects)


def test_layout_matches_the_stated_position_and_relation(batch):
    for spec, masks in zip(batch["specs"], batch["masks"]):
        centres = [np.argwhere(masks == k + 1).mean(0)[::-1] for k in range(len(spec.objects))]  # (x, y)
        if spec.position is not None:
            x, y = centres[0]
            expected = {"left": x < 26, "right": x > 38, "top": y < 26, "bottom": y > 38, "center": abs(x - 32) < 7 and abs(y - 32) < 7}
            assert expected[spec.position], (spec.position, x, y)
        else:
            (x1, y1), (x2, y2) = centres
            expected = {"above": y2 - y1, "below": y1 - y2, "left of": x2 - x1, "right of": x1 - x2}[spec.relation]
            assert expected > 2 * min(abs(x2 - x1), abs(y2 - y1)), spec.relation


def test_depth_background_zero_objects_distinct(batch):
    for spec, depth, masks in zip(batch["specs"], batch["depth"], batch["masks"]):
        assert np.all(depth[masks == 0] == 0)
        for k, obj in enumerate(spec.objects, start=1):
            assert np.all(depth[masks == k] == np.float32(obj.depth))
            assert 0 < obj.depth <= 1
        if len(spec.objects) == 2:
            assert abs(spec.objects[0].depth - spec.objects[1].depth) >= 0.2


def test_nearer_object_occludes():
    specs, appearance = world.sample_specs(21, 400, "plain", "train")
    overlapping = 0
    for spec, u in zip(specs, appearance):
        if len(spec.objects) != 2:
            continue
        alone = [replace(spec, objects=(o,), relation=None, position="center") for o in spec.objects]
        full = [world.render_specs([s], u[None])["masks"][0] > 0 for s in alone]
        both = full[0] & full[1]
        if not both.any():
            continue
        overlapping += 1
        scene = world.render_specs([spec], u[None])
        near = 1 + int(spec.objects[1].depth > spec.objects[0].depth)
        assert np.all(scene["masks"][0][both] == near)
        assert np.all(scene["depth"][0][both] == max(o.depth for o in spec.objects))
    assert overlapping >= 5


def test_edges_outline_every_object(batch):
    for spec, edges, masks in zip(batch["specs"], batch["edges"], batch["masks"]):
        on = edges > 0
        assert np.all(masks[on] > 0)  # outlines lie on the object side
        for k in range(1, len(spec.objects) + 1):
            region = masks == k
            inner = region.copy()
            inner[1:-1, 1:-1] &= region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
            boundary = region & ~inner
            assert boundary.any()
            # Every boundary pixel next to the background is an edge; deep interiors never are.
            assert on[boundary & (np.pad(masks, 1, mode="edge")[1:-1, :-2] == 0)].all()
            assert not on[inner].any()


def test_styles_differ_only_in_appearance():
    specs, appearance = world.sample_specs(8, 8, "plain", "train")
    plain = world.render_specs(specs, appearance)
    pastel = world.render_specs([replace(s, style="pastel") for s in specs], appearance)
    assert plain["captions"] == pastel["captions"]
    for key in ("edges", "depth", "masks"):
        np.testing.assert_array_equal(plain[key], pastel[key])
    assert np.abs(plain["images"].astype(int) - pastel["images"].astype(int)).mean() > 10
    # Pastel backgrounds are lighter.
    bg = plain["masks"] == 0
    assert pastel["images"][bg].mean() > plain["images"][bg].mean()


def test_rejects_unknown_style_and_split():
    with pytest.raises(ValueError, match="style"):
        world.render_batch(0, 1, style="neon")
    with pytest.raises(ValueError, match="split"):
        world.render_batch(0, 1, split="test")


def test_cli_writes_contact_sheet(tmp_path, capsys):
    out = tmp_path / "grid.png"
    world.main(["--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert out.stat().st_size > 1000
    assert len(lines) == 32 and any("[pastel]" in line for line in lines)
