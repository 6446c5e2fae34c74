"""The latency lookup table: one CSV row per measured item, and `predict(spec) -> ms` as a pure sum.

Row keys (kind, stage, in_width, width), stage 0-based:

    stem    stage 0   in_width = stem conv1 width, width = stage-1 width        (input_size -> input_size/4)
    embed   stage i   in_width = stage i-1 width,   width = stage i width       (stride-2 conv, i = 1..3)
    mb4d    stage i   in_width = width = stage width                           (one MB4D at the stage's grid)
    mb3d    stage i   in_width = width = stage width                           (one MB3D, i = 2..3)
    flat    stage i   the 4D->3D reshape before the stage's first MB3D (stage 3 also: the head's flatten)
    unflat  stage i   the 3D->4D reshape closing a stage 2 that ends in MB3D
    head    stage 3   in_width = final width, width = num_classes              (LayerNorm, mean, classifier)

Every row also carries the measurement's metadata (backend, device, library versions, threads, batch,
input size), which must be the same on every row of one table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas.arch import ArchSpec
from nas.errors import UserError

KINDS = ("stem", "embed", "mb4d", "mb3d", "flat", "unflat", "head")
KEY_COLUMNS = ["kind", "stage", "in_width", "width"]
LATENCY_COLUMNS = ["ms", "p25_ms", "p75_ms", "runs"]
META_COLUMNS = ["backend", "device", "versions", "threads", "batch", "input_size"]
COLUMNS = KEY_COLUMNS + ["resolution"] + LATENCY_COLUMNS + META_COLUMNS

Key = tuple[str, int, int, int]


class LUTError(UserError):
    """A latency table is malformed, or does not cover what is asked of it."""


@dataclass(frozen=True)
class Row:
    kind: str
    stage: int
    in_width: int
    width: int
    resolution: int  # side of the block's *input* grid

    @property
    def key(self) -> Key:
        return (self.kind, self.stage, self.in_width, self.width)

    def __str__(self) -> str:
        return f"{self.kind}(stage={self.stage + 1}, {self.in_width}->{self.width}, {self.resolution}px grid)"


def spec_rows(spec: ArchSpec) -> list[Row]:
    """The rows whose sum is the latency of `spec`, in network order (a pure function of the spec).

    >>> from nas.arch import PRESETS
    >>> [str(r) for r in spec_rows(PRESETS["l1"])][:2]
    ['stem(stage=1, 24->48, 224px grid)', 'mb4d(stage=1, 48->48, 56px grid)']
    """
    rows = [Row("stem", 0, spec.stem_width, spec.widths[0], spec.input_size)]
    last_3d = False
    for i, stage in enumerate(spec.stages):
        res = spec.stage_resolution(i)
        w = stage.width
        if i > 0:
            rows.append(Row("embed", i, spec.widths[i - 1], w, spec.stage_resolution(i - 1)))
        for j, code in enumerate(stage.blocks):
            if code == "3d" and (j == 0 or stage.blocks[j - 1] != "3d"):
                rows.append(Row("flat", i, w, w, res))
            rows.append(Row("mb" + code, i, w, w, res))
        last_3d = stage.num_3d > 0
        if last_3d and i < len(spec.stages) - 1:
            rows.append(Row("unflat", i, w, w, res))
    if not last_3d:  # the head flattens a network that ends in MB4D
        rows.append(Row("flat", 3, spec.widths[3], spec.widths[3], spec.stage_resolution(3)))
    rows.append(Row("head", 3, spec.widths[3], spec.num_classes, spec.stage_resolution(3)))
    return rows


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class LatencyTable:
    """A loaded, validated LUT. `predict` and `missing` never build a model or measure anything."""

    def __init__(self, df: pd.DataFrame, source: str = "<memory>", sha: str = ""):
        self.df, self.source, self.sha = validate_frame(df, source), source, sha
        self._ms: dict[Key, float] = {
            (r.kind, int(r.stage), int(r.in_width), int(r.width)): float(r.ms) for r in self.df.itertuples()
        }
        first = self.df.iloc[0]
        self.meta: dict[str, Any] = {
            c: (first[c].item() if hasattr(first[c], "item") else first[c]) for c in META_COLUMNS
        }

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise LUTError(f"latency table not found: {path}")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise LUTError(f"{path}: not a readable CSV ({' '.join(str(e).split())[:120]})") from None
        return cls(df, str(path), file_hash(path))

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    def missing(self, spec: ArchSpec) -> list[Row]:
        return self.missing_rows(spec_rows(spec))

    def missing_rows(self, rows: list[Row]) -> list[Row]:
        """The rows among `rows` that the table does not hold."""
        return [r for r in rows if r.key not in self._ms]

    def check(self, spec: ArchSpec) -> None:
        """Raise `LUTError` naming what the table lacks for `spec`."""
        if spec.input_size != self.input_size:
            raise LUTError(
                f"{self.source} was measured at input size {self.input_size}, the spec needs {spec.input_size}"
            )
        miss = self.missing(spec)
        if miss:
            shown = ", ".join(str(r) for r in miss[:4]) + (f" and {len(miss) - 4} more" if len(miss) > 4 else "")
            raise LUTError(f"{self.source} lacks {len(miss)} row(s) the spec needs: {shown}")

    def predict(self, spec: ArchSpec) -> float:
        """Predicted latency of `spec` in ms: the sum of its rows."""
        self.check(spec)
        return float(sum(self._ms[r.key] for r in spec_rows(spec)))

    def describe(self) -> str:
        m = self.meta
        return f"{m['backend']} on {m['device']}, {m['threads']} thread(s), batch {m['batch']}, {m['input_size']} px"


def validate_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Schema checks: columns, kinds, numbers, no NaN/negative/duplicate rows, one set of metadata."""
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols:
        raise LUTError(f"{source}: missing column(s) {missing_cols}; not a latency table written by nas.build_lut")
    if df.empty:
        raise LUTError(f"{source}: the table has no rows")
    bad_kind = sorted(set(df["kind"]) - set(KINDS))
    if bad_kind:
        raise LUTError(f"{source}: unknown kind(s) {bad_kind}; expected {KINDS}")
    numeric = ["stage", "in_width", "width", "resolution", "runs", "threads", "batch", "input_size"]
    for col in numeric + ["ms", "p25_ms", "p75_ms"]:
        values = pd.to_numeric(df[col], errors="coerce")
        if values.isna().any():
            line = int(values.isna().to_numpy().nonzero()[0][0]) + 2  # +1 header, +1 one-based
            raise LUTError(f"{source}: column {col!r} has a missing or non-numeric value on line {line}")
        if (values < 0).any():
            line = int((values < 0).to_numpy().nonzero()[0][0]) + 2
            raise LUTError(f"{source}: column {col!r} has a negative value on line {line}")
        df[col] = values
    for col in numeric:
        if not np.all(df[col] == df[col].round()):
            raise LUTError(f"{source}: column {col!r} must hold integers")
        df[col] = df[col].astype(int)
    dup = df.duplicated(subset=KEY_COLUMNS, keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise LUTError(f"{source}: duplicate rows for {r['kind']} stage={r['stage']} {r['in_width']}->{r['width']}")
    for col in META_COLUMNS:
        if df[col].nunique(dropna=False) != 1:
            raise LUTError(
                f"{source}: rows disagree on {col!r} ({sorted(map(str, df[col].unique()))[:3]}); "
                f"one table holds one backend/device/setting"
            )
    return df.reset_index(drop=True)
