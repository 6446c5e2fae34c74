"""The search space: per-stage depth (number of MetaPaths) and width, plus the block hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from supernet.arch import STAGES_WITH_3D, ArchSpec, AttentionSpec, SpecError, StageSpec

Choices = tuple[tuple[str, ...], ...]  # per stage, per MetaPath: "4d" / "3d" / "id"


def stages_of(choices: Choices, widths: tuple[int, ...]) -> tuple[StageSpec, ...]:
    """The concrete stages of a supernet path: identity MetaPaths dropped. The one place choices become stages.

    >>> stages_of((("4d", "id"), ("id",), ("4d", "3d"), ("3d",)), (16, 32, 48, 64))[2]
    StageSpec(width=48, blocks=('4d', '3d'))
    """
    return tuple(StageSpec(w, tuple(c for c in stage if c != "id")) for w, stage in zip(widths, choices))


@dataclass
class AttentionConfig:
    key_dim: int = 32
    num_heads: int = 8
    attn_ratio: float = 4.0


@dataclass
class SpaceConfig:
    """A hydra schema (`search_configs/space/*.yaml`). Each stage has `depths[i]` MetaPaths at width `widths[i]`."""

    name: str = "l7"
    depths: list[int] = field(default_factory=lambda: [6, 6, 18, 8])
    widths: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    input_size: int = 224
    mlp_ratio: float = 4.0
    pool_size: int = 3
    attention: AttentionConfig = field(default_factory=AttentionConfig)
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
            attention=AttentionSpec(self.attention.key_dim, self.attention.num_heads, self.attention.attn_ratio),
            drop_path_rate=self.drop_path_rate,
            layer_scale_init=self.layer_scale_init,
        ).validate()
