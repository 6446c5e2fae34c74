"""`ArchSpec`: one concrete EfficientViT network as a small, frozen, YAML-serialisable value.

Every stage of the project reads or writes this structure: `supernet.build_model(spec)` builds it,
`latency_lut.predict(spec, lut)` prices it, and the slimming engine turns one spec into the next.

A stage is a width and an ordered list of block codes. Identity blocks are simply absent:

    StageSpec(width=224, blocks=("4d", "4d", "4d", "3d"))   # three MB4D, then one MB3D

Dimension rules (paper Eq. 7, checked by `validate`):
  * stages 1 and 2 hold only "4d" blocks; stages 3 and 4 may also hold "3d";
  * within a stage the "3d" blocks form a suffix: the stage reshapes 4D->3D once, before its first MB3D;
  * a stage that ends in 3D and is followed by another stage reshapes back to 4D (3D->4D) before that
    stage's strided-conv embedding. The LUT prices both reshapes, so such specs are allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supernet.errors import UserError
from supernet.files import atomic_write_text

BLOCK_CODES = ("4d", "3d")
NUM_STAGES = 4
STAGES_WITH_3D = (2, 3)  # 0-based: the paper's stages 3 and 4
REDUCTION = 32  # stem (4) x three stride-2 embeddings (8) = total stride

# Upper bounds: beyond them a network does not build on a machine like ours (or is certainly a typo). Each is
# named in the error that refuses it. L7, the largest preset, is 768 wide, 18 deep, 224 px and 82M parameters.
MAX_WIDTH = 2048
MAX_DEPTH = 64  # blocks per stage
MAX_INPUT_SIZE = 1024
MAX_IN_CHANS = 64
MAX_CLASSES = 100_000
MAX_POOL = 15
MAX_KEY_DIM = 256
MAX_HEADS = 64
MAX_RATIO = 16.0  # mlp_ratio and attention.attn_ratio
FLOAT32_MAX = 3.4028234663852886e38  # layer_scale_init fills float32 weights: a larger value overflows them
MAX_PARAMS = 250_000_000  # about 1 GB of float32 weights


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) != float("inf")


class SpecError(UserError, ValueError):
    """An ArchSpec (or its YAML) is inconsistent. The message names the offending field."""


@dataclass(frozen=True)
class StageSpec:
    width: int
    blocks: tuple[str, ...] = ()

    @property
    def num_3d(self) -> int:
        return sum(b == "3d" for b in self.blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(unsafe_hash=True)  # hashable by value inside a frozen ArchSpec; not frozen, so that hydra can
class AttentionSpec:  # compose it as the space's `attention` group (space.attention.key_dim=8). Treat as immutable.
    key_dim: int = 32  # per-head query/key width, timm's default
    num_heads: int = 8
    attn_ratio: float = 4.0  # value width = attn_ratio * key_dim per head


@dataclass(frozen=True)
class ArchSpec:
    stages: tuple[StageSpec, ...]
    input_size: int = 224  # square input; must divide by 32 so every stage has an integer token grid
    in_chans: int = 3
    num_classes: int = 1000
    stem_width: int = 0  # width of the stem's first conv; 0 means "half the stage-1 width", as in timm
    mlp_ratio: float = 4.0
    pool_size: int = 3  # MB4D token mixer: avg-pool kernel
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    drop_path_rate: float = 0.0  # stochastic depth, linear over blocks and constant within a stage (timm)
    layer_scale_init: float = 1e-5

    def __post_init__(self) -> None:
        # Normalise lists (from YAML or callers) into tuples so the spec stays hashable and frozen. Values are not
        # coerced: a wrong type stays as it is, for `validate` to name.
        stages = tuple(s if isinstance(s, StageSpec) else StageSpec(**s) for s in self.stages)
        stages = tuple(
            StageSpec(
                int(s.width) if isinstance(s.width, numbers.Integral) and not isinstance(s.width, bool) else s.width,
                tuple(s.blocks) if isinstance(s.blocks, (list, tuple)) else s.blocks,
            )
            for s in stages
        )
        object.__setattr__(self, "stages", stages)
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", AttentionSpec(**self.attention))
        if self.stem_width == 0 and stages and _is_int(stages[0].width):
            object.__setattr__(self, "stem_width", stages[0].width // 2)

    # ----------------------------------------------------------------------------------------- views
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def num_3d(self) -> tuple[int, ...]:
        return tuple(s.num_3d for s in self.stages)

    def describe(self) -> str:
        return describe_stages(self.stages)

    def stage_resolution(self, stage: int) -> int:
        """Side of the token grid of 0-based `stage` (stem stride 4, then x2 per embedding)."""
        return self.input_size // (4 * 2**stage)

    def replace(self, **changes: Any) -> ArchSpec:
        return dataclasses.replace(self, **changes)

    def with_stage(self, index: int, stage: StageSpec) -> ArchSpec:
        stages = list(self.stages)
        stages[index] = stage
        return self.replace(stages=tuple(stages))

    # ------------------------------------------------------------------------------------ validation
    def validate(self) -> ArchSpec:
        """Raise `SpecError` naming the first inconsistent field; return self so calls can chain.

        >>> ArchSpec(stages=(StageSpec(48, ("4d",)),) * 3 + (StageSpec(448, ("3d", "4d")),)).validate()
        Traceback (most recent call last):
        ...
        supernet.arch.SpecError: stages[3].blocks: MB3D blocks must form a suffix of the stage, got ['3d', '4d']
        """
        for i, s in enumerate(self.stages):
            if not _is_int(s.width):
                raise SpecError(f"stages[{i}].width: expected an integer, got {s.width!r}")
            if not 0 < s.width <= MAX_WIDTH:
                raise SpecError(f"stages[{i}].width: must be in 1..{MAX_WIDTH} (MAX_WIDTH), got {s.width}")
            if not isinstance(s.blocks, tuple) or any(not isinstance(b, str) for b in s.blocks):
                raise SpecError(f"stages[{i}].blocks: expected a list of block codes, got {s.blocks!r}")
            if s.depth > MAX_DEPTH:
                raise SpecError(f"stages[{i}].blocks: at most {MAX_DEPTH} blocks per stage (MAX_DEPTH), got {s.depth}")
            bad = [b for b in s.blocks if b not in BLOCK_CODES]
            if bad:
                raise SpecError(f"stages[{i}].blocks: unknown block code {bad[0]!r}; use one of {BLOCK_CODES}")
            if s.num_3d and i not in STAGES_WITH_3D:
                raise SpecError(f"stages[{i}].blocks: MB3D is only allowed in stages 3 and 4 (paper Eq. 7)")
            first_3d = s.blocks.index("3d") if s.num_3d else s.depth
            if any(b != "3d" for b in s.blocks[first_3d:]):
                raise SpecError(
                    f"stages[{i}].blocks: MB3D blocks must form a suffix of the stage, got {list(s.blocks)}"
                )
        if len(self.stages) != NUM_STAGES:
            raise SpecError(f"stages: expected {NUM_STAGES} stages, got {len(self.stages)}")
        if sum(self.depths) == 0:
            raise SpecError("stages: the network is empty (every stage has zero blocks)")
        ints = {
            "input_size": ("MAX_INPUT_SIZE", MAX_INPUT_SIZE),
            "in_chans": ("MAX_IN_CHANS", MAX_IN_CHANS),
            "num_classes": ("MAX_CLASSES", MAX_CLASSES),
            "stem_width": ("MAX_WIDTH", MAX_WIDTH),
            "pool_size": ("MAX_POOL", MAX_POOL),
        }
        for name, (bound, hi) in ints.items():
            v = getattr(self, name)
            if not _is_int(v):
                raise SpecError(f"{name}: expected an integer, got {v!r}")
            if not 0 < v <= hi:
                raise SpecError(f"{name}: must be in 1..{hi} ({bound}), got {v}")
        if self.input_size % REDUCTION:
            raise SpecError(f"input_size: must be a positive multiple of {REDUCTION}, got {self.input_size}")
        if self.pool_size % 2 == 0:
            raise SpecError(f"pool_size: must be odd so the pooled grid keeps its size, got {self.pool_size}")
        a = self.attention
        if not isinstance(a, AttentionSpec):
            raise SpecError(f"attention: expected a mapping of key_dim, num_heads, attn_ratio, got {a!r}")
        for name, v, hi in (("key_dim", a.key_dim, MAX_KEY_DIM), ("num_heads", a.num_heads, MAX_HEADS)):
            if not _is_int(v) or not 0 < v <= hi:
                raise SpecError(f"attention.{name}: expected an integer in 1..{hi}, got {v!r}")
        for name, v in (("mlp_ratio", self.mlp_ratio), ("attention.attn_ratio", a.attn_ratio)):
            if not _is_num(v) or not 0 < v <= MAX_RATIO:
                raise SpecError(f"{name}: expected a number in (0, {MAX_RATIO:g}] (MAX_RATIO), got {v!r}")
        if int(a.attn_ratio * a.key_dim) < 1:
            raise SpecError(f"attention.attn_ratio: attn_ratio x key_dim must give a value width >= 1, got {a}")
        for i, w in enumerate(self.widths):
            if int(w * self.mlp_ratio) < 1:
                raise SpecError(f"mlp_ratio: stage {i + 1} (width {w}) would get an MLP of 0 hidden units")
        if not _is_num(self.drop_path_rate) or not 0.0 <= self.drop_path_rate < 1.0:
            raise SpecError(f"drop_path_rate: must be a number in [0, 1), got {self.drop_path_rate!r}")
        if not _is_num(self.layer_scale_init) or abs(self.layer_scale_init) > FLOAT32_MAX:
            raise SpecError(
                f"layer_scale_init: must be a finite number a float32 weight can hold, got {self.layer_scale_init!r}"
            )
        if self.approx_params() > MAX_PARAMS:
            raise SpecError(
                f"stages: about {self.approx_params() / 1e6:.0f}M parameters, above MAX_PARAMS={MAX_PARAMS / 1e6:.0f}M"
            )
        return self

    def approx_params(self) -> int:
        """Weights of the network, counted from the spec (convs, linears, attention; norms and biases ignored)."""
        a, n = self.attention, 9 * self.in_chans * self.stem_width + 9 * self.stem_width * self.widths[0]
        for i, s in enumerate(self.stages):
            w, hidden = s.width, int(s.width * self.mlp_ratio)
            n += 9 * self.widths[i - 1] * w if i else 0
            n += (s.depth - s.num_3d) * 2 * w * hidden
            qkv = a.num_heads * (2 * a.key_dim + int(a.attn_ratio * a.key_dim))
            n += s.num_3d * (2 * w * hidden + w * qkv + int(a.attn_ratio * a.key_dim) * a.num_heads * w)
        return n + 2 * self.widths[-1] * self.num_classes

    # -------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [{"width": s.width, "blocks": list(s.blocks)} for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        """Build and validate a spec from a plain mapping. Unknown keys are an error, never ignored."""
        if not isinstance(d, dict):
            raise SpecError(f"arch spec: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        _reject_unknown("arch spec", d, {f.name for f in dataclasses.fields(cls)})
        if "stages" not in d:
            raise SpecError("stages: missing")
        stages = d["stages"]
        if not isinstance(stages, (list, tuple)):
            raise SpecError(f"stages: expected a list, got {type(stages).__name__}")
        parsed = []
        for i, s in enumerate(stages):
            if not isinstance(s, dict):
                raise SpecError(f"stages[{i}]: expected a mapping with width and blocks")
            _reject_unknown(f"stages[{i}]", s, {"width", "blocks"})
            if "width" not in s:
                raise SpecError(f"stages[{i}].width: missing")
            blocks = s.get("blocks") or []
            if not isinstance(blocks, (list, tuple)):
                raise SpecError(f"stages[{i}].blocks: expected a list, got {blocks!r}")
            parsed.append(StageSpec(s["width"], tuple(blocks)))
        d["stages"] = tuple(parsed)
        att = d.get("attention", {})
        if att is None or not isinstance(att, dict):
            raise SpecError(f"attention: expected a mapping of key_dim, num_heads, attn_ratio, got {att!r}")
        _reject_unknown("attention", att, {f.name for f in dataclasses.fields(AttentionSpec)})
        d["attention"] = AttentionSpec(**att)
        try:
            spec = cls(**d)
        except TypeError as e:  # e.g. a field of the wrong type that dataclass construction trips on
            raise SpecError(f"arch spec: {e}") from None
        return spec.validate()

    def to_yaml(self, extra: dict[str, Any] | None = None) -> str:
        """YAML text of the spec. `extra` adds informational top-level keys (e.g. predicted latency)
        under `meta:`, which `from_yaml` ignores when reading the spec back."""
        d = self.to_dict()
        if extra:
            d = {"meta": extra, **d}
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ArchSpec:
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"arch YAML: not valid YAML ({str(e).splitlines()[0]})") from None
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k != "meta"}
        return cls.from_dict(d)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        atomic_write_text(path, self.to_yaml(extra))

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"arch file not found: {p}")
        return cls.from_yaml(p.read_text())

    # --------------------------------------------------------------------------------------- timm
    def timm_incompatibility(self) -> str | None:
        """Why timm's `EfficientFormer` cannot express this spec, or None when it can."""
        n3d = self.num_3d
        if any(n3d[:-1]):
            return "MB3D blocks outside the last stage"
        if n3d[-1] == 0:
            return "timm's head needs at least one MB3D at the end of the last stage"
        if self.stem_width != self.stages[0].width // 2:
            return "timm's stem width is fixed at half the stage-1 width"
        if self.attention != AttentionSpec():
            return "timm's attention is fixed at key_dim=32, num_heads=8, attn_ratio=4"
        return None

    def to_timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `timm.models.efficientformer.EfficientFormer`.

        >>> PRESETS["l1"].to_timm_kwargs()["num_vit"]
        1
        """
        why = self.timm_incompatibility()
        if why:
            raise SpecError(f"spec is not timm-compatible: {why}")
        return {
            "depths": self.depths,
            "embed_dims": self.widths,
            "num_vit": self.num_3d[-1],
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "mlp_ratios": self.mlp_ratio,
            "pool_size": self.pool_size,
            "layer_scale_init_value": self.layer_scale_init,
            "drop_path_rate": self.drop_path_rate,
        }


def describe_stages(stages: tuple[StageSpec, ...]) -> str:
    """The one-line summary of a network's stages, wherever one is printed.

    >>> describe_stages((StageSpec(16, ("4d",)), StageSpec(32), StageSpec(48, ("4d", "3d")), StageSpec(64, ("3d",))))
    'depths [1, 0, 2, 1] widths [16, 32, 48, 64] MB3D [0, 0, 1, 1]'
    """
    depths, widths, n3d = [s.depth for s in stages], [s.width for s in stages], [s.num_3d for s in stages]
    return f"depths {depths} widths {widths} MB3D {n3d}"


def _reject_unknown(where: str, d: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")


def efficientformer_spec(depths: tuple[int, ...], widths: tuple[int, ...], num_vit: int, **kw: Any) -> ArchSpec:
    """The spec of timm's EfficientFormer: all MB4D, with `num_vit` MB3D closing the last stage.

    >>> efficientformer_spec((1, 1, 1, 2), (16, 32, 48, 64), num_vit=1).stages[3].blocks
    ('4d', '3d')
    """
    stages = []
    for i, (d, w) in enumerate(zip(depths, widths)):
        n3d = num_vit if i == len(depths) - 1 else 0
        stages.append(StageSpec(w, ("4d",) * (d - n3d) + ("3d",) * n3d))
    return ArchSpec(stages=tuple(stages), **kw).validate()


PRESETS: dict[str, ArchSpec] = {
    "l1": efficientformer_spec((3, 2, 6, 4), (48, 96, 224, 448), num_vit=1),
    "l3": efficientformer_spec((4, 4, 12, 6), (64, 128, 320, 512), num_vit=4),
    "l7": efficientformer_spec((6, 6, 18, 8), (96, 192, 384, 768), num_vit=8),
}


def resolve_arch(arch: str | Path) -> ArchSpec:
    """A preset name (`l1`, `l3`, `l7`) or the path of an arch YAML."""
    if str(arch) in PRESETS:
        return PRESETS[str(arch)]
    p = Path(arch)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return ArchSpec.load(p)
    raise SpecError(f"arch: {arch!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file")


def arch_meta(path: str | Path) -> dict[str, Any]:
    """The `meta:` block nas.slim writes into an arch YAML (empty for presets)."""
    p = Path(path)
    if not p.is_file():
        return {}
    d = yaml.safe_load(p.read_text())
    return d.get("meta", {}) if isinstance(d, dict) else {}
