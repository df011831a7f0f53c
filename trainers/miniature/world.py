"""The miniature world: 64x64 scenes of one or two coloured shapes, each with an exact caption.

A one-step distillation has to be proven on data a CPU can train on, and judged without human raters.
Here every image comes with the full truth (attributes, outlines, depth), captions parse back to
attributes, and a fixed 10 % of attribute combinations never appears in training, so an evaluator can
test composition. Only numpy, cv2 and the standard library are imported.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart")
COLOURS = {  # object colour name -> RGB
    "red": (220, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 220),
    "purple": (140, 50, 185),
    "white": (245, 245, 245),
}
BACKGROUNDS = {  # background name -> (plain RGB, pastel RGB); pastel is lighter but keeps its name readable
    "black": ((22, 22, 26), (50, 50, 58)),
    "gray": ((120, 120, 120), (172, 172, 172)),
    "white": ((236, 236, 232), (252, 250, 244)),
    "brown": ((110, 70, 40), (172, 132, 100)),
    "pink": ((235, 140, 175), (250, 200, 215)),
    "yellow": ((225, 200, 70), (250, 236, 160)),
}
STYLES = ("plain", "pastel")
SPLITS = ("train", "eval")
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom", "center": "in the center"}
RELATIONS = {"above": "above", "below": "below", "left of": "to the left of", "right of": "to the right of"}
INVERSE_RELATION = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
EVAL_PER_MILLE = 100  # share of attribute combinations reserved for the eval split

MARGIN = 2.0
ONE_SIZE = (9.0, 16.0)  # object half-extent in pixels, one-object scenes
TWO_SIZE = (7.5, 13.0)  # two-object scenes
MIN_GAP = 0.85  # centre distance along the relation axis, in units of r1 + r2: small overlaps, never hidden
MAX_SKEW = 0.3  # off-axis offset / on-axis distance: keeps the relation unambiguous
MAX_ANGLE = 10.0  # degrees; small, so a square never turns into a diamond


@dataclass(frozen=True)
class ObjectSpec:
    """One object. Geometry is None for specs parsed from captions, which do not state it."""

    shape: str
    colour: str
    centre: tuple[float, float] | None = None  # (x, y) in pixels
    size: float | None = None  # half-extent in pixels (a circle's radius)
    depth: float | None = None  # in (0, 1], 1 = nearest
    angle: float = 0.0  # degrees


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene: objects in caption order, plus what the caption does not say (geometry, style)."""

    objects: tuple[ObjectSpec, ...]
    background: str
    position: str | None = None  # one object: a key of POSITIONS
    relation: str | None = None  # two objects: a key of RELATIONS, read "object 1 <relation> object 2"
    style: str | None = None

    def attributes(self) -> SceneSpec:
        """Only what a caption states, so specs compare equal exactly when their captions do."""
        objects = tuple(ObjectSpec(o.shape, o.colour) for o in self.objects)
        return SceneSpec(objects, self.background, self.position, self.relation)

    def canonical(self) -> SceneSpec:
        """The same scene described with "above" or "left of": "A below B" and "B above A" are one image."""
        if self.relation in ("below", "right of"):
            return replace(self, objects=self.objects[::-1], relation=INVERSE_RELATION[self.relation])
        return self

    def combination(self) -> tuple[str, ...]:
        """The key that decides the split: canonical shapes, colours and layout; background and style are free."""
        spec = self.canonical()
        if len(spec.objects) == 1:
            return (spec.objects[0].shape, spec.objects[0].colour, spec.position)
        a, b = spec.objects
        return (a.shape, a.colour, spec.relation, b.shape, b.colour)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(spec: SceneSpec) -> str:
    """The one sentence that states count, shapes, colours, layout and background (never style)."""
    phrases = [f"{_article(o.colour)} {o.colour} {o.shape}" for o in spec.objects]
    if len(spec.objects) == 1:
        body = f"{phrases[0]} {POSITIONS[spec.position]}"
    else:
        body = f"{phrases[0]} {RELATIONS[spec.relation]} {phrases[1]}"
    return f"{body} on {_article(spec.background)} {spec.background} background"


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJECT = rf"an? ({_alternation(COLOURS)}) ({_alternation(SHAPES)})"
_BACKGROUND = rf" on an? ({_alternation(BACKGROUNDS)}) background"
_ONE = re.compile(rf"{_OBJECT} ({_alternation(POSITIONS.values())}){_BACKGROUND}")
_TWO = re.compile(rf"{_OBJECT} ({_alternation(RELATIONS.values())}) {_OBJECT}{_BACKGROUND}")
_POSITION_OF = {phrase: key for key, phrase in POSITIONS.items()}
_RELATION_OF = {phrase: key for key, phrase in RELATIONS.items()}


def parse_caption(text: str) -> SceneSpec:
    """Inverse of `caption` (case, spacing and a final full stop are forgiven); ValueError otherwise."""
    clean = " ".join(text.lower().strip().rstrip(".").split())
    if m := _ONE.fullmatch(clean):
        colour, shape, phrase, background = m.groups()
        return SceneSpec((ObjectSpec(shape, colour),), background, position=_POSITION_OF[phrase])
    if m := _TWO.fullmatch(clean):
        c1, s1, phrase, c2, s2, background = m.groups()
        return SceneSpec((ObjectSpec(s1, c1), ObjectSpec(s2, c2)), background, relation=_RELATION_OF[phrase])
    raise ValueError(f"not a miniature-world caption: {text!r}")


def _held_out(key: tuple[str, ...]) -> bool:
    # blake2b, not hash(): the split must be the same in every process and on every machine.
    digest = hashlib.blake2b("|".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 1000 < EVAL_PER_MILLE


def is_held_out(spec: SceneSpec) -> bool:
    """True when the spec's attribute combination belongs to the eval split."""
    return _held_out(spec.combination())


def _canonical_key(key: tuple[str, ...]) -> tuple[str, ...]:
    s1, c1, r, s2, c2 = key
    return (s2, c2, INVERSE_RELATION[r], s1, c1) if r in ("below", "right of") else key


@lru_cache(maxsize=None)
def combinations(split: str) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    """(one-object, two-object) caption-order combinations of a split; two identical objects are excluded."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    objects = [(s, c) for s in SHAPES for c in COLOURS]
    one = [(s, c, p) for s, c in objects for p in POSITIONS]
    two = [(s1, c1, r, s2, c2) for s1, c1 in objects for r in RELATIONS for s2, c2 in objects if (s1, c1) != (s2, c2)]
    want = split == "eval"
    one = [k for k in one if _held_out(k) == want]
    two = [k for k in two if _held_out(_canonical_key(k)) == want]
    return tuple(one), tuple(two)


@lru_cache(maxsize=None)
def _backgrounds_for(colours: tuple[str, ...]) -> tuple[str, ...]:
    # An object never shares its colour name with the background, or it would vanish.
    return tuple(b for b in BACKGROUNDS if b not in colours)


def _unit_polygons() -> dict[str, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    star = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
    star_r = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
    w = 0.34
    heart_x = np.sin(t) ** 3
    heart_y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
    polys = {
        "circle": np.stack([np.cos(t), np.sin(t)], 1),
        "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
        "triangle": np.array([[0.0, -0.95], [0.98, 0.75], [-0.98, 0.75]]),
        "star": np.stack([star_r * np.cos(star), star_r * np.sin(star) + 0.08], 1),
        "diamond": np.array([[0.0, -1.05], [0.72, 0.0], [0.0, 1.05], [-0.72, 0.0]]),
        "cross": np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]]),
        "heart": np.stack([heart_x, heart_y + 0.1], 1) * 1.05,
    }
    return {k: v.astype(np.float32) for k, v in polys.items()}


_POLYGONS = _unit_polygons()
_NOISE = np.random.default_rng(20261126).normal(0.0, 2.5, (32, SIZE, SIZE, 1)).astype(np.float32)  # background grain bank
_RAMP = (np.arange(SIZE, dtype=np.float32) - (SIZE - 1) / 2) / (SIZE / 2)  # -1..1 across the image


def _points(obj: ObjectSpec) -> np.ndarray:
    a = np.deg2rad(obj.angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    pts = _POLYGONS[obj.shape] @ rot.T * obj.size + np.array(obj.centre, np.float32)
    return np.round(pts * 16).astype(np.int32)  # cv2 sub-pixel coordinates, shift=4


def _interval(u: float, lo: float, hi: float) -> float:
    return lo + u * (hi - lo)


def _sample_spec(rng: np.random.Generator, split: str, style: str) -> tuple[SceneSpec, np.ndarray]:
    """One scene from exactly one draw of 28 uniforms, so a batch's images never depend on its length."""
    u = rng.random(28).tolist()
    one, two = combinations(split)
    if u[0] < 0.5:
        shape, colour, position = one[int(u[1] * len(one))]
        keys, colours = [(shape, colour)], (colour,)
    else:
        s1, c1, relation, s2, c2 = two[int(u[1] * len(two))]
        keys, colours, position = [(s1, c1), (s2, c2)], (c1, c2), None
    backgrounds = _backgrounds_for(colours)
    background = backgrounds[int(u[2] * len(backgrounds))]
    if style == "mixed":
        style = STYLES[int(u[3] < 0.5)]
    angles = [_interval(u[4], -MAX_ANGLE, MAX_ANGLE), _interval(u[5], -MAX_ANGLE, MAX_ANGLE)]
    if len(keys) == 1:
        r = _interval(u[6], *ONE_SIZE)
        centres, sizes = [_one_centre(position, r, u[7], u[8])], [r]
        depths = [_interval(u[9], 0.5, 1.0)]
        spec_relation = None
    else:
        sizes = [_interval(u[6], *TWO_SIZE), _interval(u[7], *TWO_SIZE)]
        centres = _two_centres(relation, sizes, u[8:12])
        far, near = _interval(u[12], 0.25, 0.55), _interval(u[13], 0.75, 1.0)
        depths = [near, far] if u[14] < 0.5 else [far, near]
        spec_relation = relation
    objects = tuple(
        ObjectSpec(s, c, (round(x, 2), round(y, 2)), round(r, 2), round(d, 3), round(a, 1))
        for (s, c), (x, y), r, d, a in zip(keys, centres, sizes, depths, angles)
    )
    spec = SceneSpec(objects, background, position, spec_relation, style)
    return spec, np.array(u[16:28], np.float32)  # appearance draws, see render_specs


def _one_centre(position: str, r: float, u_axis: float, u_perp: float) -> tuple[float, float]:
    if position == "center":
        return (_interval(u_axis, 28, 36), _interval(u_perp, 28, 36))
    near_edge = _interval(u_axis, MARGIN + r, max(MARGIN + r, 22.0))
    along = near_edge if position in ("left", "top") else SIZE - near_edge
    across = _interval(u_perp, 26, 38)
    return (along, across) if position in ("left", "right") else (across, along)


def _two_centres(relation: str, sizes: list[float], u: list[float]) -> list[tuple[float, float]]:
    """Centres for "object 1 <relation> object 2": the first (top or left) object, then the second along one axis."""
    first_is_1 = relation in ("above", "left of")
    ra, rb = sizes if first_is_1 else sizes[::-1]
    d = _interval(u[0], MIN_GAP * (ra + rb), SIZE - 2 * MARGIN - ra - rb)
    a_first = _interval(u[1], MARGIN + ra, SIZE - MARGIN - rb - d)
    p = _interval(u[2], -MAX_SKEW * d, MAX_SKEW * d)
    lo, hi = max(MARGIN + ra, MARGIN + rb - p), min(SIZE - MARGIN - ra, SIZE - MARGIN - rb - p)
    q_first = _interval(u[3], lo, hi)
    first, second = (a_first, q_first), (a_first + d, q_first + p)
    if relation in ("above", "below"):
        first, second = first[::-1], second[::-1]
    return [first, second] if first_is_1 else [second, first]


def _lighten(rgb, amount: float) -> tuple[float, ...]:
    return tuple(c + (255 - c) * amount for c in rgb)


def _draw(image: np.ndarray, order: np.ndarray, spec: SceneSpec, jitter: np.ndarray) -> None:
    """Paint objects far to near (the nearer occludes) into the image and into the depth-order label map."""
    ranked = sorted(range(len(spec.objects)), key=lambda i: spec.objects[i].depth)
    for rank, i in enumerate(ranked, start=1):
        obj = spec.objects[i]
        pts = _points(obj)
        rgb = np.clip(np.array(COLOURS[obj.colour], np.float32) + jitter[3 * i : 3 * i + 3], 0, 255)
        if spec.style == "pastel":
            cv2.fillPoly(image, [pts], _lighten(rgb.tolist(), 0.5), cv2.LINE_AA, 4)
            cv2.polylines(image, [pts], True, tuple((rgb * 0.4).tolist()), 1, cv2.LINE_AA, 4)
        else:
            cv2.fillPoly(image, [pts], tuple(rgb.tolist()), cv2.LINE_AA, 4)
        cv2.fillPoly(order, [pts], rank, cv2.LINE_8, 4)


def render_specs(specs: list[SceneSpec], appearance: np.ndarray | None = None, seed: int = 0) -> dict:
    """Render specs that carry geometry. `appearance` [n, 12] uniforms set background brightness and tint (0:3), gradient
    (3:5), grain (5) and object colour jitter (6:12); drawn from `seed` when not given."""
    n = len(specs)
    if appearance is None:
        appearance = np.random.default_rng(seed).random((n, 12), dtype=np.float32)
    u = appearance
    base = np.array([BACKGROUNDS[s.background][s.style == "pastel"] for s in specs], np.float32).reshape(n, 3)
    base += (u[:, 0:1] - 0.5) * 16  # [n, 3] brightness jitter of +-8
    base[:, 0::2] += (u[:, 1:3] - 0.5) * 8  # a red/blue tint of +-4 that never changes the colour's name
    grad = (u[:, 3:5] - 0.5) * 28  # [n, 2] gradient of up to +-14 across the image
    images = (
        base[:, None, None, :]
        + grad[:, 0, None, None, None] * _RAMP[None, None, :, None]
        + grad[:, 1, None, None, None] * _RAMP[None, :, None, None]
        + _NOISE[(u[:, 5] * len(_NOISE)).astype(np.int64)]
    )  # [n, 64, 64, 3]
    images = np.clip(images, 0, 255).astype(np.uint8)
    order = np.zeros((n, SIZE, SIZE), np.uint8)  # 0 background, 1 farther object, 2 nearer object
    for k, spec in enumerate(specs):
        _draw(images[k], order[k], spec, (u[k, 6:12] - 0.5) * 20)  # +-10 per channel and object
    return {"images": images, **_ground_truth(order, specs), "captions": [caption(s) for s in specs], "specs": list(specs)}


def _ground_truth(order: np.ndarray, specs: list[SceneSpec]) -> dict[str, np.ndarray]:
    """Edges, depth and caption-order masks, all from the depth-order label map (never from the RGB)."""
    n = len(specs)
    depth_lut = np.zeros((n, 3), np.float32)  # [n, order label] -> depth
    mask_lut = np.zeros((n, 3), np.uint8)  # [n, order label] -> 1-based caption index
    for k, spec in enumerate(specs):
        ranked = sorted(range(len(spec.objects)), key=lambda i: spec.objects[i].depth)
        for rank, i in enumerate(ranked, start=1):
            depth_lut[k, rank] = spec.objects[i].depth
            mask_lut[k, rank] = i + 1
    flat = order.reshape(n, -1).astype(np.int64)  # [n, 4096]
    depth = np.take_along_axis(depth_lut, flat, 1).reshape(order.shape)  # [n, 64, 64]
    masks = np.take_along_axis(mask_lut, flat, 1).reshape(order.shape)  # [n, 64, 64]
    # A pixel is an edge when a 4-neighbour is farther: outlines land on the object side, and an
    # occlusion boundary on the occluder's side, one pixel wide.
    pad = np.pad(order, ((0, 0), (1, 1), (1, 1)), mode="edge")  # [n, 66, 66]
    neighbours = (pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:])
    edge = np.zeros(order.shape, bool)
    for nb in neighbours:
        edge |= order > nb
    return {"edges": edge.astype(np.uint8) * 255, "depth": depth, "masks": masks}


def sample_specs(seed: int, n: int, style: str = "plain", split: str = "train") -> tuple[list[SceneSpec], np.ndarray]:
    """n specs with geometry plus their [n, 12] appearance draws, deterministic in (seed, i)."""
    if style not in (*STYLES, "mixed"):
        raise ValueError(f"style must be one of {STYLES + ('mixed',)}, got {style!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed)
    drawn = [_sample_spec(rng, split, style) for _ in range(n)]
    appearance = np.stack([a for _, a in drawn]) if drawn else np.zeros((0, 12), np.float32)
    return [s for s, _ in drawn], appearance


def render_batch(seed: int, n: int, style: str = "plain", split: str = "train") -> dict:
    """n scenes from one seed: images uint8 [n,64,64,3], edges uint8 [n,64,64] (0/255), depth float32
    [n,64,64] (1 = near, background 0), masks uint8 [n,64,64] (caption index, 0 = background), captions, specs.
    style is "plain", "pastel" or "mixed" (each image picks one); image i does not depend on n."""
    specs, appearance = sample_specs(seed, n, style, split)
    return render_specs(specs, appearance)


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """Captions of held-out combinations, for scoring a generator on compositions it never saw."""
    specs, _ = sample_specs(seed, n, "plain", "eval")
    return [caption(s) for s in specs]


def contact_sheet(seed: int = 0, per_style: int = 16, columns: int = 8, scale: int = 2) -> tuple[np.ndarray, list[str]]:
    """A grid of plain then pastel samples (RGB) and their captions in reading order."""
    tiles, captions = [], []
    for k, style in enumerate(STYLES):
        batch = render_batch(seed + k, per_style, style=style)
        tiles.extend(batch["images"])
        captions.extend(f"[{style}] {c}" for c in batch["captions"])
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (SIZE + 2), columns * (SIZE + 2), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * (SIZE + 2) : r * (SIZE + 2) + SIZE, c * (SIZE + 2) : c * (SIZE + 2) + SIZE] = tile
    return cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST), captions


def benchmark(n: int = 4096, repeats: int = 3) -> float:
    """Best images/s of render_batch on one thread, ground truth included."""
    cv2.setNumThreads(1)
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        render_batch(r, n, style="mixed")
        best = min(best, time.perf_counter() - start)
    return n / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write a contact sheet PNG of both styles here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bench", action="store_true", help="print render throughput (images/s, one thread)")
    args = parser.parse_args(argv)
    if not args.out and not args.bench:
        parser.error("nothing to do: pass --out and/or --bench")
    if args.out:
        sheet, captions = contact_sheet(args.seed)
        if not cv2.imwrite(args.out, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            sys.exit(f"could not write {args.out}")
        for i, text in enumerate(captions):
            print(f"{i:3d} {text}")
    if args.bench:
        print(f"{benchmark():.0f} images/s (one thread, 64x64, with edges, depth and masks)")


if __name__ == "__main__":
    main()
