"""The search space: per-stage depth (number of MetaPaths) and width, plus the block hyper-parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from supernet.arch import STAGES_WITH_3D, ArchSpec, AttentionSpec, SpecError, StageSpec

Choices = tuple[tuple[str, ...], ...]  # per stage, per MetaPath: "4d" / "3d" / "id"


def stages_of(choices: Choices, widths: tuple[int, ...]) -> tuple[StageSpec, ...]:
    """The concrete stages of a supernet path: identity MetaPaths dropped. The one place choices become stages.

    >>> stages_of((("4d", "id"), ("id",), ("4d", "3d"), ("3d",)), (16, 32, 48, 64))[2]
    StageSpec(width=48, blocks=('4d', '3d'))
    """
    return tuple(StageSpec(w, tuple(c for c in stage if c != "id")) for w, stage in zip(widths, choices))


# The slimming actions' edits, in one place: the slimmer's moves (nas/search/slimmer.py), the slimmer-like samples
# (latency_lut/sampling.py) and the action pairs of LUT validation (latency_lut/validation.py) all make them here.
def choices_of(stages: tuple[StageSpec, ...]) -> tuple[Choices, tuple[int, ...]]:
    """The path (every MetaPath active) and widths of concrete stages: `stages_of`'s inverse.

    >>> choices_of((StageSpec(16, ("4d",)), StageSpec(32, ("4d", "3d"))))
    ((('4d',), ('4d', '3d')), (16, 32))
    """
    return tuple(tuple(s.blocks) for s in stages), tuple(s.width for s in stages)


def with_path(choices: Choices, stage: int, pos: int, code: str) -> Choices:
    """MetaPath `pos` of `stage` set to `code` ("id" drops it, "4d" replaces an MB3D, a block restores it).

    >>> with_path((("4d", "3d"), ("4d",)), 0, 1, "id")
    (('4d', 'id'), ('4d',))
    """
    out = [list(s) for s in choices]
    out[stage][pos] = code
    return tuple(tuple(s) for s in out)


def first_mb3d(choices: Choices) -> tuple[int, int] | None:
    """(stage, position) of the first MB3D in network order, or None.

    >>> first_mb3d((("4d",), ("4d", "id"), ("4d", "3d", "3d")))
    (2, 1)
    """
    return next(((i, j) for i, s in enumerate(choices) for j, c in enumerate(s) if c == "3d"), None)


def resized(widths: tuple[int, ...], stage: int, delta: int) -> tuple[int, ...]:
    """Stage `stage` narrowed (delta < 0) or widened (delta > 0) by |delta| channels.

    >>> resized((32, 64), 1, -16)
    (32, 48)
    """
    return tuple(w + delta if i == stage else w for i, w in enumerate(widths))


@dataclass
class SpaceConfig:
    """A hydra schema (`search_configs/space/*.yaml`). Each stage has `depths[i]` MetaPaths at width `widths[i]`."""

    # The defaults are search_configs/space/tiny.yaml's, the default space of every command (space=l7: the paper's)
    name: str = "tiny"
    depths: list[int] = field(default_factory=lambda: [2, 2, 4, 3])
    widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    input_size: int = 64
    mlp_ratio: float = 4.0
    pool_size: int = 3
    attention: AttentionSpec = field(default_factory=lambda: AttentionSpec(16, 4, 2.0))  # one spec, also the schema
    layer_scale_init: float = 1e-5
    drop_path_rate: float = 0.0

    def choices(self, stage: int) -> tuple[str, ...]:
        """Candidate blocks of every MetaPath in `stage` (paper Eq. 7); "id" is Identity."""
        return ("4d", "3d", "id") if stage in STAGES_WITH_3D else ("4d", "id")

    def max_spec(self, num_classes: int, in_chans: int = 3) -> ArchSpec:
        """The largest network of the space: every MetaPath an MB4D. The supernet is built on this spec."""
        if len(self.depths) != 4 or len(self.widths) != 4:
            raise SpecError(f"space {self.name}: needs 4 depths and 4 widths, got {self.depths} and {self.widths}")
        return ArchSpec(
            stages=tuple(StageSpec(w, ("4d",) * d) for d, w in zip(self.depths, self.widths)),
            input_size=self.input_size,
            in_chans=in_chans,
            num_classes=num_classes,
            mlp_ratio=self.mlp_ratio,
            pool_size=self.pool_size,
            attention=AttentionSpec(**dataclasses.asdict(self.attention)),  # hydra may hand over a copy
            drop_path_rate=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
        ).validate()
