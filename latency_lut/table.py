"""The latency lookup table: one CSV row per measured item, and `predict(spec) -> ms`.

Row keys (kind, stage, in_width, width), stage 0-based. The block rows are exactly the entries of the model's
own `layer_plan(spec)` (supernet/model.py), so the table prices what `build_model` runs:

    stem    stage 0   in_width = stem conv1 width, width = stage-1 width        (input_size -> input_size/4)
    embed   stage i   in_width = stage i-1 width,   width = stage i width       (stride-2 conv, i = 1..3)
    mb4d    stage i   in_width = width = stage width                           (one MB4D at the stage's grid)
    mb3d    stage i   in_width = width = stage width                           (one MB3D, i = 2..3)
    flat    stage i   the 4D->3D reshape before the stage's first MB3D (stage 3 also: the head's flatten)
    unflat  stage i   the 3D->4D reshape closing a stage 2 that ends in MB3D
    head    stage 3   in_width = final width, width = num_classes              (LayerNorm, mean, classifier)

Two more kinds are not layers:

    call    the backend's per-call overhead (running an identity module), measured once. Block rows are stored
            with it subtracted, and a network pays it once: the raw sum of a spec is its layer rows plus `call`.
    net     a whole calibration network, measured in the same interleaved rounds as the rows. `arch` holds its
            stages (`encode_stages`), in_width its index, width its visit: each network is measured on several
            visits spread over the build, and its latency is their median. From these the table fits its correction.

Calibration (`latency_lut/correction.py`): a correction from the raw sum of rows to whole-network latency,
fitted on the `net` rows, its model (a scale, affine, a power law or one scale per row group) chosen by
leave-one-out error over those networks. `predict` applies it, `predict_interval` adds an interval; `raw` is the
plain sum. A table without `net` rows loads, and says it is uncalibrated. The fit is a pure function of the
stored measurements, so a table measured on another machine and imported keeps its own calibration. The spread
of each network over its visits says how steady the machine was during the build (`host_variation`).

Every row also carries the measurement's metadata (backend, device, library versions, threads, batch, input
size) and the `fingerprint`: every block hyper-parameter that changes latency. A spec that differs from the
fingerprint is refused, naming the field.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency_lut.correction import (
    GROUP_NAMES,
    GROUPS,
    Correction,
    better,
    fit_correction,
    host_variation,
)
from supernet.arch import ArchSpec, StageSpec
from supernet.errors import UserError
from supernet.files import read_csv
from supernet.model import Layer, layer_plan

LAYER_KINDS = ("stem", "embed", "mb4d", "mb3d", "flat", "unflat", "head")
KINDS = (*LAYER_KINDS, "call", "net")
KEY_COLUMNS = ["kind", "stage", "in_width", "width"]
LATENCY_COLUMNS = ["ms", "p25_ms", "p75_ms", "runs"]
META_COLUMNS = ["backend", "device", "versions", "threads", "batch", "input_size"]
COLUMNS = KEY_COLUMNS + ["resolution"] + LATENCY_COLUMNS + META_COLUMNS
OPTIONAL_COLUMNS = ["fingerprint", "arch", "raw_ms", "weights"]  # absent in tables written before they existed
# raw_ms: the row as timed, before its passes were read against the sentinel (measure.normalize); = ms when not
# weights: the floats the row's deployed (fused) module reads per inference: weights, biases, cached attention biases
CALL_KEY = ("call", 0, 0, 0)
READINGS = ("auto", "sentinel", "timed")  # LatencyTable(reading=): which reading of the build's passes it predicts from
UNSTEADY = 0.03  # a build whose machine speed varied more than this (host_variation) warns that figures are loose

Key = tuple[str, int, int, int]
Row = Layer  # a table row is keyed like a layer of the model's plan


class LUTError(UserError):
    """A latency table is malformed, or does not cover what is asked of it."""


def spec_rows(spec: ArchSpec) -> list[Row]:
    """The layer rows whose sum (plus one `call`) is the latency of `spec`: the model's own layer plan.

    >>> from supernet.arch import PRESETS
    >>> [str(r) for r in spec_rows(PRESETS["l1"])][:2]
    ['stem(stage=1, 24->48, 224px grid)', 'mb4d(stage=1, 48->48, 56px grid)']
    """
    return layer_plan(spec)


# ------------------------------------------------------------------------------------------- fingerprint
def fingerprint(spec: ArchSpec, width_step: int) -> dict[str, Any]:
    """Every hyper-parameter besides depths and widths that changes a network's latency (and so must match
    between a table and the specs it prices). The stem's first conv width is fixed by the space (half its
    stage-1 width), not re-derived from a narrowed stage 1.

    >>> from supernet.arch import PRESETS
    >>> fingerprint(PRESETS["l1"], 16)["stem_width"]
    24
    """
    a = spec.attention
    return {
        "in_chans": spec.in_chans,
        "num_classes": spec.num_classes,
        "stem_width": spec.stem_width,
        "mlp_ratio": float(spec.mlp_ratio),
        "pool_size": spec.pool_size,
        "attention.key_dim": a.key_dim,
        "attention.num_heads": a.num_heads,
        "attention.attn_ratio": float(a.attn_ratio),
        "width_step": width_step,
    }


def encode_fingerprint(fp: dict[str, Any]) -> str:
    return ";".join(f"{k}={v}" for k, v in fp.items())


def decode_fingerprint(text: str, source: str) -> dict[str, str]:
    try:
        return dict(item.split("=", 1) for item in str(text).split(";"))
    except ValueError:
        raise LUTError(f"{source}: unreadable fingerprint {str(text)[:80]!r}") from None


# ------------------------------------------------------------------------------------ calibration networks
def encode_stages(spec: ArchSpec) -> str:
    """A spec's stages as text, for a `net` row's `arch` column.

    >>> from supernet.arch import PRESETS
    >>> encode_stages(PRESETS["l1"])
    '48:4d,4d,4d|96:4d,4d|224:4d,4d,4d,4d,4d,4d|448:4d,4d,4d,3d'
    """
    return "|".join(f"{s.width}:{','.join(s.blocks)}" for s in spec.stages)


def decode_stages(text: str, base: ArchSpec) -> ArchSpec:
    """The spec `encode_stages` wrote, with `base`'s other fields."""
    stages = []
    for part in str(text).split("|"):
        width, _, blocks = part.partition(":")
        stages.append(StageSpec(int(width), tuple(b for b in blocks.split(",") if b)))
    return base.replace(stages=tuple(stages)).validate()


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class LatencyTable:
    """A loaded, validated LUT. `predict`, `raw` and `missing` never build a model or measure anything."""

    def __init__(self, df: pd.DataFrame, source: str = "<memory>", sha: str = "", reading: str = "auto"):
        """`reading`: which of the build's two readings of its passes the table predicts from. "sentinel": each pass
        read against the sentinel (`ms`); "timed": as timed (`raw_ms`); "auto", the default: the sentinel's,
        unless the rows as timed explain the calibration networks better by the rule that chooses a correction
        (`correction.better` on the two readings' leave-one-out errors, their corrections each chosen as usual).
        The sentinel can scatter too, and dividing by it then moves the rows (benchmarks/README.md section 3)."""
        if reading not in READINGS:
            raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
        self.df, self.source, self.sha = validate_frame(df, source), source, sha
        self.host_variation_as_timed = self._host_variation("raw_ms")
        self.reading_errors: tuple[float, float] | None = None  # auto: (sentinel's, as timed's) leave-one-out error
        if reading == "auto" and not np.allclose(self.df["raw_ms"], self.df["ms"]):
            self._read("timed")  # first, so that the usual outcome (the sentinel's) is read last and kept
            timed = self.calibration
            self._read("sentinel")
            sentinel = self.calibration
            if timed is not None and sentinel is not None and len(sentinel.errors) > 1:
                self.reading_errors = (sentinel.cv_error, timed.cv_error)
                if better(np.array(timed.errors), np.array(sentinel.errors)):
                    self._read("timed")
        else:
            self._read("timed" if reading == "timed" else "sentinel")

    def _read(self, reading: str) -> None:
        """Index the rows of `reading` ("sentinel": the `ms` column; "timed": `raw_ms`) and fit the correction.
        `df` stays as stored: a table written back (a resumed build, `recalibrate`) keeps both readings."""
        self.reading = reading
        self.column = "raw_ms" if reading == "timed" else "ms"  # the column the table predicts from
        layers = self.df[self.df["kind"].isin(LAYER_KINDS + ("call",))]
        self._ms: dict[Key, float] = {}
        self._spread: dict[Key, float] = {}  # p75 - p25 of the row's samples
        self._runs: dict[Key, int] = {}
        self._weights: dict[Key, float] | None = {} if layers["weights"].notna().all() else None  # older: none
        for r in layers.itertuples():
            key = (r.kind, int(r.stage), int(r.in_width), int(r.width))
            self._ms[key], self._spread[key] = float(getattr(r, self.column)), float(r.p75_ms - r.p25_ms)
            self._runs[key] = max(int(r.runs), 1)
            if self._weights is not None:
                self._weights[key] = float(r.weights)
        first = self.df.iloc[0]
        self.meta: dict[str, Any] = {
            c: (first[c].item() if hasattr(first[c], "item") else first[c]) for c in META_COLUMNS
        }
        fp = first["fingerprint"] if "fingerprint" in self.df.columns else None
        readable = isinstance(fp, str) and fp
        self.fingerprint: dict[str, str] | None = decode_fingerprint(fp, self.source) if readable else None
        self.calibration: Correction | None = None
        self.host_variation = self._host_variation(self.column)
        inputs = self._calibration_inputs()
        if inputs is not None:
            self.calibration = fit_correction(inputs[0], self.call_ms, inputs[1], weights=inputs[2])

    def _calibration_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """(raw row sums per group, measured ms, weights or None) of the calibration networks; None with fewer than
        three, or in a partial build that lacks rows they need."""
        nets = self.networks()
        if len(nets) < 3 or any(self.missing(spec) for spec, _ in nets):
            return None
        sums = [self.sums(spec) for spec, _ in nets]
        weights = None if self._weights is None else np.array([w for _, w in sums])
        return np.array([p for p, _ in sums]), np.array([ms for _, ms in nets]), weights

    @classmethod
    def load(cls, path: str | Path, reading: str = "auto") -> LatencyTable:
        path = Path(path)
        df = read_csv(path, LUTError, f"latency table not found: {path}", keep_default_na=False, na_values=[""])
        return cls(df, str(path), file_hash(path), reading)

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def call_ms(self) -> float:
        """The per-call overhead a network pays once (0 in tables written before it was measured)."""
        return self._ms.get(CALL_KEY, 0.0)

    @property
    def width_step(self) -> int | None:
        return int(self.fingerprint["width_step"]) if self.fingerprint else None

    def base_spec(self) -> ArchSpec | None:
        """A spec carrying the fingerprint's hyper-parameters (stages are placeholders), or None without one."""
        fp = self.fingerprint
        if fp is None:
            return None
        from supernet.arch import AttentionSpec

        stem = int(fp["stem_width"])
        return ArchSpec(
            stages=(StageSpec(2 * stem, ("4d",)),) + (StageSpec(16, ()),) * 3,
            input_size=self.input_size,
            in_chans=int(fp["in_chans"]),
            num_classes=int(fp["num_classes"]),
            stem_width=stem,
            mlp_ratio=float(fp["mlp_ratio"]),
            pool_size=int(fp["pool_size"]),
            attention=AttentionSpec(
                int(fp["attention.key_dim"]), int(fp["attention.num_heads"]), float(fp["attention.attn_ratio"])
            ),
        )

    def _host_variation(self, column: str) -> float:
        """How much the machine's speed varied during the build: the median over calibration networks of the
        spread of their visits (`correction.host_variation`) in `column` (`ms`: what the table holds, `raw_ms`: as
        timed, before the sentinel); nan with fewer than two visits."""
        nets = self.df[self.df["kind"] == "net"]
        if nets.empty:
            return float("nan")
        visits = nets.pivot_table(index="in_width", columns="width", values=column).dropna()
        return host_variation(visits.to_numpy()) if len(visits) else float("nan")

    def networks(self) -> list[tuple[ArchSpec, float]]:
        """The calibration networks stored in the table, in index order, each with its measured latency: the
        median over its visits (one row per visit)."""
        nets = self.df[self.df["kind"] == "net"]
        base = self.base_spec()
        if nets.empty or base is None:
            return []
        out = []
        for index, visits in nets.groupby("in_width", sort=True):
            if visits["arch"].nunique() != 1:
                raise LUTError(f"{self.source}: the visits of calibration network {index} disagree on its arch")
            try:
                spec = decode_stages(visits["arch"].iloc[0], base)
            except (ValueError, UserError) as e:
                raise LUTError(f"{self.source}: a calibration network's arch is unreadable ({e})") from None
            out.append((spec, float(np.median(visits[self.column]))))
        return out

    def missing(self, spec: ArchSpec) -> list[Row]:
        return self.missing_rows(spec_rows(spec))

    def missing_rows(self, rows: list[Row]) -> list[Row]:
        """The rows among `rows` that the table does not hold."""
        return [r for r in rows if r.key not in self._ms]

    def check_fingerprint(self, spec: ArchSpec) -> None:
        """Refuse a spec whose latency-relevant hyper-parameters differ from the ones the table was measured
        with, naming the first differing field. (The width step is checked as coverage, by `missing_rows`.)"""
        if spec.input_size != self.input_size:
            raise LUTError(
                f"{self.source} was measured at input size {self.input_size}, the spec needs {spec.input_size}"
            )
        if self.fingerprint is None:
            return
        for field, value in fingerprint(spec, 0).items():
            if field == "width_step":
                continue
            ours = self.fingerprint.get(field)
            if ours is None or str(ours) != str(value):
                raise LUTError(f"{self.source} was measured with {field}={ours}, but this needs {field}={value}")

    def check(self, spec: ArchSpec) -> None:
        """Raise `LUTError` naming what the table lacks for `spec`."""
        self.check_fingerprint(spec)
        miss = self.missing(spec)
        if miss:
            shown = ", ".join(str(r) for r in miss[:4]) + (f" and {len(miss) - 4} more" if len(miss) > 4 else "")
            raise LUTError(f"{self.source} lacks {len(miss)} row(s) the spec needs: {shown}")

    def raw_row(self, row: Row) -> float:
        """One layer row's ms (the table's own value; `LUTError` if it lacks the row)."""
        if row.key not in self._ms:
            raise LUTError(f"{self.source} lacks the row {row}")
        return self._ms[row.key]

    def sums(self, spec: ArchSpec) -> tuple[np.ndarray, float | None]:
        """One pass over the spec's layer rows: their ms summed per row group (`correction.GROUP_NAMES`, without
        the call), and their deployed weights in millions (None: the table does not record them)."""
        self.check(spec)
        parts, weights = dict.fromkeys(GROUP_NAMES, 0.0), 0.0
        for r in spec_rows(spec):
            parts[GROUPS[r.kind]] += self._ms[r.key]
            weights += self._weights[r.key] if self._weights is not None else 0.0
        return np.array(list(parts.values())), None if self._weights is None else weights / 1e6

    def raw_parts(self, spec: ArchSpec) -> np.ndarray:
        """The spec's layer rows summed per row group (`correction.GROUP_NAMES`), without the call (ms)."""
        return self.sums(spec)[0]

    def weights(self, spec: ArchSpec) -> float | None:
        """The spec's deployed weights in millions, the sum of its rows' (None: the table does not record them)."""
        return self.sums(spec)[1]

    def raw(self, spec: ArchSpec) -> float:
        """The plain sum: the spec's layer rows plus one per-call overhead (ms)."""
        self.check(spec)
        return float(sum(self._ms[r.key] for r in spec_rows(spec))) + self.call_ms

    def predict(self, spec: ArchSpec, calibrated: bool = True) -> float:
        """Predicted latency of `spec` in ms: the corrected raw sum (the raw sum if uncalibrated)."""
        if calibrated and self.calibration is not None:
            return float(self.calibration(*self.sums(spec)))
        return self.raw(spec)

    def predict_interval(self, spec: ArchSpec) -> tuple[float, float, float]:
        """(predicted, low, high) ms, about a 90% interval. Its half-width, relative, adds in quadrature: 1.645
        times the rows' own standard error (`rows_se` over all the spec's rows), the correction's 90th-percentile
        cross-validated error, and half the machine's variation during the build. A guide to where a measurement
        on the build's machine may land, not a guarantee: drift after the build is not in it."""
        from collections import Counter

        ms = self.predict(spec)
        rel = [1.645 * self.rows_se(Counter(r.key for r in spec_rows(spec))) / self.raw(spec)]
        if self.calibration is not None and np.isfinite(self.calibration.cv_p90):
            rel.append(self.calibration.cv_p90)
        if np.isfinite(self.host_variation):
            rel.append(self.host_variation / 2)  # the visits' full range; a measurement lands within half of it
        half = math.sqrt(sum(x * x for x in rel)) * ms
        return ms, max(ms - half, 0.0), ms + half

    @staticmethod
    def differing_rows(a: ArchSpec, b: ArchSpec) -> dict[Key, int]:
        """The rows in which two specs differ, each with how many more times one spec uses it than the other."""
        from collections import Counter

        ka, kb = Counter(r.key for r in spec_rows(a)), Counter(r.key for r in spec_rows(b))
        return dict((ka - kb) + (kb - ka))

    def noise(self, a: ArchSpec, b: ArchSpec) -> float:
        """The rows' own spread (p75 - p25, summed) over the rows in which two specs differ: a predicted
        difference smaller than this is within measurement noise."""
        return float(sum(self._spread[k] * n for k, n in self.differing_rows(a, b).items()))

    def rows_se(self, counts: dict[Key, int]) -> float:
        """The standard error of a sum of rows, each used `n` times (ms, raw). A row's statistic (the 25th
        percentile of its `runs` samples) has a standard error of about (p75 - p25) / sqrt(runs): the normal
        approximation of a quantile's error, 1.36 sigma / sqrt(n), with sigma = IQR / 1.349. A row used n times
        counts n times (one measurement); distinct rows add in quadrature."""
        return math.sqrt(sum((self._spread[k] / math.sqrt(self._runs[k]) * n) ** 2 for k, n in counts.items()))

    def difference_se(self, a: ArchSpec, b: ArchSpec) -> float:
        """The standard error of `predict(a) - predict(b)`, from the rows in which they differ (`rows_se`), scaled
        by the calibration's typical measured / raw ratio. The slimmer's floor on a saving is a multiple of this:
        a smaller saving is indistinguishable from noise."""
        se = self.rows_se(self.differing_rows(a, b))
        return se * (self.calibration.scale if self.calibration is not None else 1.0)

    def local_backend(self) -> tuple[Any, str]:
        """(the table's backend with its settings, set up, "") if it runs on this machine and this is the device it
        was measured on; else (None, why not). What `nas.slim --verify` and `nas.export` measure with."""
        from latency_lut.backends import make_backend

        name, device = str(self.meta["backend"]), str(self.meta["device"])
        backend = make_backend(name, int(self.meta["threads"]))
        try:
            backend.setup()
        except UserError as e:
            return None, str(e)
        if backend.device != device:
            return None, f"the LUT was measured on {device!r}, this machine is {backend.device!r}"
        return backend, ""

    def describe(self) -> str:
        m = self.meta
        cal = f"calibrated: {self.calibration.describe()}" if self.calibration else "uncalibrated"
        if self.reading == "timed" and self.reading_errors is not None:
            s, t = self.reading_errors
            cal += (
                f"; rows as timed, not read against the sentinel (they explain the calibration networks better: "
                f"leave-one-out error {t * 100:.1f}% against {s * 100:.1f}%)"
            )
        return (
            f"{m['backend']} on {m['device']}, {m['threads']} thread(s), batch {m['batch']}, {m['input_size']} px, "
            f"{cal}"
        )

    def steadiness(self) -> str:
        """One line on how steady the machine was during the build (its calibration visits), a warning above
        `UNSTEADY`; for a table read against the sentinel, both as timed and as the table holds them."""
        v, t = self.host_variation, self.host_variation_as_timed
        if not np.isfinite(v):
            return "machine steadiness during the build: unknown (fewer than two visits per calibration network)"
        read = f" as timed, {v * 100:.1f}% once read against the sentinel" if abs(t - v) > 1e-9 else ""
        if v > UNSTEADY:
            return (
                f"warning: this machine's speed varied by {(t if read else v) * 100:.1f}% during the build{read}; "
                f"absolute figures are uncertain by about {v * 100:.1f}%"
            )
        varied = (t if read else v) * 100
        return f"this machine's speed varied by {varied:.1f}% during the build{read} (calibration visits)"


def validate_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Schema checks: columns, kinds, numbers, no NaN/negative/duplicate rows, one set of metadata."""
    df = df.copy()
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
    raw = pd.to_numeric(df["raw_ms"], errors="coerce") if "raw_ms" in df.columns else df["ms"]
    if (raw < 0).any():
        raise LUTError(
            f"{source}: column 'raw_ms' has a negative value on line {int((raw < 0).to_numpy().nonzero()[0][0]) + 2}"
        )
    df["raw_ms"] = raw.fillna(df["ms"])  # rows written before raw_ms, or never read against the sentinel
    if "weights" in df.columns:
        weights = pd.to_numeric(df["weights"], errors="coerce")
        bad = (weights < 0) | (df["weights"].notna() & weights.isna())
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise LUTError(f"{source}: column 'weights' has a negative or non-numeric value on line {line}")
        df["weights"] = weights
    else:
        df["weights"] = np.nan  # a table written before the column: the memory correction is not tried
    for col in numeric:
        if not np.all(df[col] == df[col].round()):
            raise LUTError(f"{source}: column {col!r} must hold integers")
        df[col] = df[col].astype(int)
    dup = df.duplicated(subset=KEY_COLUMNS, keep=False)
    if dup.any():
        r = df[dup].iloc[0]
        raise LUTError(f"{source}: duplicate rows for {r['kind']} stage={r['stage']} {r['in_width']}->{r['width']}")
    nets = df["kind"] == "net"
    if nets.any() and ("arch" not in df.columns or df.loc[nets, "arch"].isna().any()):
        raise LUTError(f"{source}: a calibration network ('net' row) has no arch")
    for col in META_COLUMNS + (["fingerprint"] if "fingerprint" in df.columns else []):
        if df[col].nunique(dropna=False) != 1:
            raise LUTError(
                f"{source}: rows disagree on {col!r} ({sorted(map(str, df[col].unique()))[:3]}); "
                f"one table holds one backend/device/setting"
            )
    return df.reset_index(drop=True)
