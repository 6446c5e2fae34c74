"""Networks drawn from a search space: uniformly, or shaped like the slimmer's outputs. Used to pick the
calibration networks (`nas.build_lut`) and the held-out validation networks (`nas.validate_lut`)."""

from __future__ import annotations

import random

from latency_lut.measure import width_options
from latency_lut.table import encode_stages, spec_rows
from supernet.arch import ArchSpec, StageSpec
from supernet.space import SpaceConfig, resized, stages_of, with_path


def random_spec(space: SpaceConfig, num_classes: int, rng: random.Random, step: int = 16) -> ArchSpec:
    """A uniform member of the space: per stage a depth in [0, max], a width in `step`s, and (stages 3-4) a
    random MB3D suffix length. At least one block overall."""
    base = space.max_spec(num_classes)
    while True:
        stages = []
        for i, (d, w) in enumerate(zip(space.depths, space.widths)):
            depth = rng.randint(0, d)
            n3d = rng.randint(0, depth) if "3d" in space.choices(i) else 0
            stages.append(StageSpec(rng.choice(width_options(w, step)), ("4d",) * (depth - n3d) + ("3d",) * n3d))
        if any(s.depth for s in stages):
            return base.replace(stages=tuple(stages)).validate()


def slimmer_like_spec(space: SpaceConfig, num_classes: int, rng: random.Random, step: int = 16) -> ArchSpec:
    """A network like the slimmer's states: the full network (with or without an MB3D suffix in stages 3-4),
    then 1-5 slimming actions: drop a block, narrow a stage by `step`, empty a stage, or remove an MB3D."""
    full = space.max_spec(num_classes)
    paths = []
    for i, d in enumerate(space.depths):
        n3d = rng.choice([0, 0, 1, min(2, d)]) if "3d" in space.choices(i) else 0
        paths.append(("4d",) * (d - n3d) + ("3d",) * n3d)
    choices, widths = tuple(paths), tuple(space.widths)
    for _ in range(rng.randint(1, 5)):
        i = rng.randrange(4)
        active = [j for j, c in enumerate(choices[i]) if c != "id"]
        action = rng.choice(["drop", "drop", "narrow", "narrow", "empty", "no3d"])
        if action == "drop" and active:
            choices = with_path(choices, i, active[rng.randrange(len(active))], "id")
        elif action == "narrow" and widths[i] - step > 0:
            widths = resized(widths, i, -step)
        elif action == "empty":
            for j in active:
                choices = with_path(choices, i, j, "id")
        elif action == "no3d" and "3d" in choices[i]:
            choices = with_path(choices, i, choices[i].index("3d"), "id")
        if all(c == "id" for stage in choices for c in stage):  # never empty the whole network
            choices = with_path(choices, i, 0, "4d")
    return full.replace(stages=stages_of(choices, widths)).validate()


def approx_cost(spec: ArchSpec) -> float:
    """A cheap size proxy (channel products x grid area over the layer plan), for spreading samples."""
    return float(
        sum(r.in_width * r.width * r.resolution**2 * (8 if r.kind[:2] == "mb" else 1) for r in spec_rows(spec))
    )


def mixed_specs(
    space: SpaceConfig,
    num_classes: int,
    n: int,
    seed: int,
    step: int = 16,
    exclude: set[str] = frozenset(),
    spread: bool = False,
) -> list[ArchSpec]:
    """`n` distinct networks, half uniform and half slimmer-like, none whose `encode_stages` is in `exclude`.
    With `spread`, they are picked from 20x as many candidates at evenly spaced quantiles of `approx_cost`, so
    that they span the space's latency range (the calibration set)."""
    rng = random.Random(seed)
    want = n * 20 if spread else n
    seen, out = set(exclude), []
    tries = 0
    while len(out) < want and tries < want * 50:
        tries += 1
        draw = random_spec if len(out) % 2 == 0 else slimmer_like_spec
        spec = draw(space, num_classes, rng, step)
        key = encode_stages(spec)
        if key not in seen:
            seen.add(key)
            out.append(spec)
    if not spread or len(out) <= n:
        return out[:n]
    ranked = sorted(out, key=approx_cost)
    picks = sorted({round(k * (len(ranked) - 1) / (n - 1)) for k in range(n)}) if n > 1 else [len(ranked) // 2]
    return [ranked[k] for k in picks]
