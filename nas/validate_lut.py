"""`python -m nas.validate_lut lut=PATH.csv samples=N`: does the LUT predict whole networks?

Samples N random specs from the space (mixed depths, widths and MB3D counts), measures each whole fused
deploy network end to end on the LUT's own backend and settings, interleaved in shuffled rounds, and compares
with `predict`. Reports median absolute % error, the share within +-10%, Spearman rank correlation and the
worst cases; writes validation.csv and a predicted-vs-measured scatter PNG beside the LUT (or in out=).
Also reports an affine correction (measured ~ a * predicted + b) fitted leave-one-out, so its figures are
out-of-sample.
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from latency_lut.backends import make_backend
from latency_lut.measure import MeasureConfig, measure_interleaved, width_options
from latency_lut.table import LatencyTable, LUTError
from nas.arch import ArchSpec, StageSpec, atomic_write_text
from nas.config import compose, setup_logging
from nas.errors import run_cli
from supernet.space import SpaceConfig

log = logging.getLogger(__name__)


@dataclass
class ValidateLUTConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    lut: str = "???"  # the LUT CSV to validate
    samples: int = 25
    num_classes: int = 10
    out: str | None = None  # folder for validation.csv / validation.png; default: beside the LUT
    seed: int = 0
    measure: MeasureConfig = field(default_factory=lambda: MeasureConfig(warmup=5, rounds=30, runs_per_round=5))


def random_spec(space: SpaceConfig, num_classes: int, rng: random.Random) -> ArchSpec:
    """A random member of the space: per stage a depth in [0, max], a width in 16-steps, and (stages 3-4) a
    random MB3D suffix length. At least one block overall."""
    base = space.max_spec(num_classes)
    while True:
        stages = []
        for i, (d, w) in enumerate(zip(space.depths, space.widths)):
            depth = rng.randint(0, d)
            n3d = rng.randint(0, depth) if "3d" in space.choices(i) else 0
            stages.append(StageSpec(rng.choice(width_options(w)), ("4d",) * (depth - n3d) + ("3d",) * n3d))
        if any(s.depth for s in stages):
            return base.replace(stages=tuple(stages)).validate()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def error_stats(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = (pred - meas) / meas * 100
    return {
        "median_abs_pct_err": float(np.median(np.abs(err))),
        "within_10pct": float(np.mean(np.abs(err) <= 10)),
        "spearman": spearman(pred, meas),
        "median_signed_pct_err": float(np.median(err)),
    }


def loo_affine(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of an affine fit measured ~ a * pred + b."""
    out = np.empty_like(pred)
    for k in range(len(pred)):
        mask = np.arange(len(pred)) != k
        a, b = np.polyfit(pred[mask], meas[mask], 1)
        out[k] = a * pred[k] + b
    return out


def run(cfg: ValidateLUTConfig) -> pd.DataFrame:
    from supernet import build_model

    table = LatencyTable.load(cfg.lut)
    if cfg.samples < 3:
        raise LUTError(f"samples={cfg.samples}: need at least 3 networks for error and rank statistics")
    meta = table.meta
    if int(meta["input_size"]) != cfg.space.input_size:
        raise LUTError(
            f"{cfg.lut} was measured at {meta['input_size']} px but space {cfg.space.name} is "
            f"{cfg.space.input_size} px; pass the matching space="
        )
    backend = make_backend(str(meta["backend"]), int(meta["threads"]))
    backend.setup()
    rng = random.Random(cfg.seed)
    specs = [random_spec(cfg.space, cfg.num_classes, rng) for _ in range(cfg.samples)]
    for s in specs:
        table.check(s)
    batch = int(meta["batch"])
    log.info(
        "measuring %d whole networks on %s, interleaved (%d rounds x %d runs)",
        len(specs),
        table.describe(),
        cfg.measure.rounds,
        cfg.measure.runs_per_round,
    )

    def prepare(spec: ArchSpec):
        import torch

        model = build_model(spec).eval().fuse()
        return backend.prepare(model, torch.randn(batch, spec.in_chans, spec.input_size, spec.input_size))

    stats = measure_interleaved(specs, prepare, backend, cfg.measure, random.Random(cfg.seed + 1))
    pred = np.array([table.predict(s) for s in specs])
    meas = np.array([s["ms"] for s in stats])
    cal = loo_affine(pred, meas)
    df = pd.DataFrame(
        {
            "depths": [str(list(s.depths)) for s in specs],
            "widths": [str(list(s.widths)) for s in specs],
            "mb3d": [str(list(s.num_3d)) for s in specs],
            "predicted_ms": pred,
            "measured_ms": meas,
            "measured_p25_ms": [s["p25_ms"] for s in stats],
            "measured_p75_ms": [s["p75_ms"] for s in stats],
            "pct_err": (pred - meas) / meas * 100,
            "affine_loo_ms": cal,
        }
    )
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.lut).parent
    atomic_write_text(out_dir / "validation.csv", df.to_csv(index=False))
    raw, aff = error_stats(pred, meas), error_stats(cal, meas)
    print(report(df, raw, aff, table))
    from nas.plots import plot_lut_validation

    plot_lut_validation(pred, meas, cal, out_dir / "validation.png", title=table.describe())
    log.info("wrote %s and %s", out_dir / "validation.csv", out_dir / "validation.png")
    df.attrs.update(raw=raw, affine=aff)
    return df


def report(df: pd.DataFrame, raw: dict[str, float], aff: dict[str, float], table: LatencyTable) -> str:
    lines = [
        f"LUT {table.source} ({table.describe()}), {len(df)} random networks",
        f"{'':<22}{'median |err|':>13}{'within ±10%':>13}{'Spearman':>10}{'median err':>12}",
    ]
    for name, s in (("sum of rows", raw), ("affine (leave-1-out)", aff)):
        lines.append(
            f"{name:<22}{s['median_abs_pct_err']:>12.1f}%{s['within_10pct'] * 100:>12.0f}%"
            f"{s['spearman']:>10.3f}{s['median_signed_pct_err']:>+11.1f}%"
        )
    lines.append("worst cases (sum of rows):")
    worst = df.reindex(df["pct_err"].abs().sort_values(ascending=False).index).head(5)
    for r in worst.itertuples():
        lines.append(
            f"  depths {r.depths} widths {r.widths} MB3D {r.mb3d}: predicted {r.predicted_ms:.3f} ms, "
            f"measured {r.measured_ms:.3f} ms ({r.pct_err:+.1f}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = compose("validate_lut", sys.argv[1:] if argv is None else argv, ValidateLUTConfig)
    run(cfg)


if __name__ == "__main__":
    run_cli(main)
