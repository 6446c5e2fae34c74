"""Measuring rows: the deploy-mode module of each LUT row, and the interleaved timing method.

Method (see also ../shared/DESIGN.md on noise): modules are built in eval mode and fused exactly as the
deployed network fuses them (BN into conv, LayerScale into linear/conv, cached attention bias). Rows are
measured in groups of `interleave`: each gets `warmup` untimed runs, then `rounds` rounds in which every row
of the group runs `runs_per_round` times, in a freshly shuffled order each round, so that machine drift
spreads over all rows instead of biasing one. A row's latency is the median of its `rounds x runs_per_round`
timings; p25/p75 give the spread. Groups are drawn from a shuffled row list, and each finished group is
written to the CSV at once, so a crash loses at most the group in flight.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from latency_lut.backends import Backend
from latency_lut.table import Row
from nas.arch import ArchSpec
from supernet.blocks import Embedding, Flat, Stem, Unflat
from supernet.model import make_block
from supernet.space import SpaceConfig

log = logging.getLogger(__name__)


@dataclass
class MeasureConfig:
    warmup: int = 10
    rounds: int = 20
    runs_per_round: int = 5
    interleave: int = 8  # rows timed together in shuffled rounds; 1 = strictly one row at a time
    seed: int = 0


class Head(nn.Module):
    """The deployed head on tokens: final LayerNorm, mean over tokens, merged classifier. (B, N, C) -> (B, K)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).mean(dim=1))


def width_options(max_width: int, step: int = 16) -> list[int]:
    """Widths a stage can be narrowed to, in steps of 16 from its full width.

    >>> width_options(64)
    [64, 48, 32, 16]
    """
    return list(range(max_width, 0, -step))


def space_rows(space: SpaceConfig, num_classes: int) -> list[Row]:
    """Every row a spec from `space` (any depth, widths narrowed in 16-steps, MB3D anywhere legal) can need."""
    opts = [width_options(w) for w in space.widths]
    spec = space.max_spec(num_classes)
    res = [spec.stage_resolution(i) for i in range(4)]
    rows = [Row("stem", 0, spec.stem_width, w, space.input_size) for w in opts[0]]
    for i in range(1, 4):
        rows += [Row("embed", i, a, b, res[i - 1]) for a in opts[i - 1] for b in opts[i]]
    for i in range(4):
        rows += [Row("mb4d", i, w, w, res[i]) for w in opts[i]]
        if "3d" in space.choices(i):
            rows += [Row("mb3d", i, w, w, res[i]) for w in opts[i]]
            rows += [Row("flat", i, w, w, res[i]) for w in opts[i]]
            if i < 3:
                rows += [Row("unflat", i, w, w, res[i]) for w in opts[i]]
    if "3d" not in space.choices(3):
        rows += [Row("flat", 3, w, w, res[3]) for w in opts[3]]
    rows += [Row("head", 3, w, num_classes, res[3]) for w in opts[3]]
    return rows


def row_module(row: Row, spec: ArchSpec, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The fused, eval-mode module of a row and a realistic input for it."""
    r, w, b = row.resolution, row.width, batch
    if row.kind == "stem":
        return Stem(spec.in_chans, w, row.in_width).eval().fuse(), torch.randn(b, spec.in_chans, r, r)
    if row.kind == "embed":
        return Embedding(row.in_width, w).eval().fuse(), torch.randn(b, row.in_width, r, r)
    if row.kind == "mb4d":
        return make_block("4d", w, spec, r).eval().fuse(), torch.randn(b, w, r, r)
    if row.kind == "mb3d":
        # inside the network MB3D receives the transposed (non-contiguous) view Flat produces: feed the same
        return make_block("3d", w, spec, r).eval().fuse(), torch.randn(b, w, r, r).flatten(2).transpose(1, 2)
    if row.kind == "flat":
        return Flat(), torch.randn(b, w, r, r)
    if row.kind == "unflat":
        return Unflat(r), torch.randn(b, w, r, r).flatten(2).transpose(1, 2)
    if row.kind == "head":
        return Head(row.in_width, row.width).eval(), torch.randn(b, r * r, row.in_width)
    raise ValueError(f"unknown row kind {row.kind}")


def summarize(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "ms": float(np.median(a)),
        "p25_ms": float(np.percentile(a, 25)),
        "p75_ms": float(np.percentile(a, 75)),
        "runs": len(a),
    }


def measure_interleaved(
    items: list[object],
    prepare: Callable[[object], Callable[[], object]],
    backend: Backend,
    cfg: MeasureConfig,
    rng: random.Random,
) -> list[dict[str, float]]:
    """Time `items` together: warm-up, then `cfg.rounds` shuffled rounds of `cfg.runs_per_round` runs each."""
    runners = [prepare(it) for it in items]
    for run in runners:
        for _ in range(cfg.warmup):
            run()
    samples: list[list[float]] = [[] for _ in items]
    order = list(range(len(items)))
    for _ in range(cfg.rounds):
        rng.shuffle(order)
        for k in order:
            samples[k] += backend.time(runners[k], cfg.runs_per_round)
    return [summarize(s) for s in samples]


def measure_rows(
    rows: list[Row],
    spec: ArchSpec,
    backend: Backend,
    cfg: MeasureConfig,
    batch: int,
    on_group: Callable[[list[tuple[Row, dict[str, float]]]], None],
    progress: Any = None,  # a tqdm bar (anything with update(n))
) -> None:
    """Measure `rows` in shuffled groups, calling `on_group` with each finished group's results."""
    rng = random.Random(cfg.seed)
    rows = list(rows)
    rng.shuffle(rows)
    torch.manual_seed(cfg.seed)
    for start in range(0, len(rows), max(cfg.interleave, 1)):
        group = rows[start : start + max(cfg.interleave, 1)]
        stats = measure_interleaved(
            group, lambda row: backend.prepare(*row_module(row, spec, batch)), backend, cfg, rng
        )
        on_group(list(zip(group, stats)))
        if progress is not None:
            progress.update(len(group))
