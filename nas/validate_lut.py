"""`python -m nas.validate_lut lut=PATH.csv samples=40`: does the LUT predict whole networks, and their differences?

Held-out networks: `samples` networks disjoint from the table's calibration networks, half drawn uniformly from
the space and half shaped like the slimmer's states (near-full networks with a few MetaPaths dropped, a stage
emptied or narrowed, with and without MB3D). Each whole fused deploy network is measured on the LUT's own backend
and settings, all of them interleaved in shuffled rounds, and compared with `predict` (calibrated) and with the
raw sum, side by side: median absolute % error, the share within +-10%, Spearman rank correlation.

Drift: the table's own calibration networks are re-timed in the same rounds. Their ratio to the stored times is
the machine's drift since the build, and the scale they give today is reported as 'recalibrated now' beside the
build-time calibration: what `nas.build_lut recalibrate=true out=LUT` would give (the held-out networks stay out
of every fit).

Action differences: for `action_pairs` slimmer-like networks, one slimming action each (drop one MetaPath,
narrow one stage by the width step, remove one MB3D) gives a pair whose latency difference is both predicted and
measured (in the same interleaved rounds). Reported: the share of pairs whose measured sign agrees with the
predicted one, among pairs whose predicted difference exceeds the rows' own spread (p75 - p25 of the rows that
differ), since the slimmer's choices rest on such differences.

Writes validation.csv, actions.csv and a predicted-vs-measured scatter PNG beside the LUT (or in out=).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from latency_lut.backends import make_backend
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.sampling import mixed_specs, slimmer_like_spec
from latency_lut.table import Calibration, LatencyTable, LUTError, encode_stages
from nas.config import config_main
from nas.errors import run_cli
from supernet.arch import ArchSpec, StageSpec
from supernet.files import atomic_write_text
from supernet.space import SpaceConfig

log = logging.getLogger(__name__)


@dataclass
class ValidateLUTConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    lut: str = "???"  # the LUT CSV to validate
    samples: int = 40  # held-out whole networks
    action_pairs: int = 20  # slimmer-like networks, each with one drop / narrow / remove-MB3D action
    num_classes: int = 10
    out: str | None = None  # folder for validation.csv / actions.csv / validation.png; default: beside the LUT
    seed: int = 0
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # as nas.build_lut times its calibration networks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def error_stats(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = (pred - meas) / meas * 100
    return {
        "median_abs_pct_err": float(np.median(np.abs(err))),
        "within_10pct": float(np.mean(np.abs(err) <= 10)),
        "spearman": spearman(pred, meas),
        "median_signed_pct_err": float(np.median(err)),
        "worst_abs_pct_err": float(np.max(np.abs(err))),
    }


def action_variants(spec: ArchSpec, rng: random.Random, step: int) -> list[tuple[str, ArchSpec]]:
    """One of each slimming action applied to `spec`, where it applies: drop a random block, narrow a random
    stage by `step`, remove the first MB3D."""
    out = []
    occupied = [i for i, s in enumerate(spec.stages) if s.depth]
    if sum(spec.depths) > 1:
        i = rng.choice(occupied)
        blocks = list(spec.stages[i].blocks)
        blocks.pop(rng.randrange(len(blocks)))
        out.append(("drop_path", spec.with_stage(i, StageSpec(spec.stages[i].width, tuple(blocks)))))
    narrowable = [i for i, s in enumerate(spec.stages) if s.width - step > 0]
    if narrowable:
        i = rng.choice(narrowable)
        out.append(("narrow_stage", spec.with_stage(i, StageSpec(spec.stages[i].width - step, spec.stages[i].blocks))))
    for i, s in enumerate(spec.stages):
        if s.num_3d and sum(spec.depths) > 1:
            blocks = list(s.blocks)
            blocks.remove("3d")
            out.append(("remove_mb3d", spec.with_stage(i, StageSpec(s.width, tuple(blocks)))))
            break
    return [(a, v.validate()) for a, v in out]


def run(cfg: ValidateLUTConfig) -> pd.DataFrame:
    table = LatencyTable.load(cfg.lut)
    if cfg.samples < 3:
        raise LUTError(f"samples={cfg.samples}: need at least 3 networks for error and rank statistics")
    meta = table.meta
    if int(meta["input_size"]) != cfg.space.input_size:
        raise LUTError(
            f"{cfg.lut} was measured at {meta['input_size']} px but space {cfg.space.name} is "
            f"{cfg.space.input_size} px; pass the matching space="
        )
    if not table.calibration:
        log.warning("%s is uncalibrated: 'predict' is the raw sum of its rows", cfg.lut)
    backend = make_backend(str(meta["backend"]), int(meta["threads"]))
    backend.setup()
    step = table.width_step or 16
    fit = table.networks()  # the calibration networks: kept out of the held-out set, and re-timed to see drift
    fit_set = {encode_stages(s) for s, _ in fit}
    specs = mixed_specs(cfg.space, cfg.num_classes, cfg.samples, cfg.seed, step, exclude=fit_set)
    rng = random.Random(cfg.seed + 1)
    pairs = []
    for _ in range(cfg.action_pairs):
        base = slimmer_like_spec(cfg.space, cfg.num_classes, rng, step)
        pairs += [(base, action, variant) for action, variant in action_variants(base, rng, step)]
    units: dict[str, list[ArchSpec]] = {}  # a base network with its action variants: timed in one group
    for b, _, v in pairs:
        units.setdefault(encode_stages(b), [b]).append(v)
    pair_specs = [s for u in units.values() for s in u]
    for s in specs + pair_specs:
        table.check(s)
    log.info(
        "measuring %d held-out networks and %d action networks on %s, interleaved (%d rounds x %d runs)",
        len(specs),
        len(pair_specs),
        table.describe(),
        cfg.measure.rounds,
        cfg.measure.runs_per_round,
    )
    groups = [[s] for s in specs] + list(units.values()) + [[s] for s, _ in fit]
    stats = measure_networks(groups, backend, cfg.measure, int(meta["batch"]), cfg.seed + 2)
    measured = {encode_stages(s): st for s, st in zip(specs + pair_specs + [s for s, _ in fit], stats)}
    now = recalibration(table, fit, measured)
    df = network_frame(specs, measured, table, now)
    actions = action_frame(pairs, measured, table)
    out_dir = Path(cfg.out) if cfg.out else Path(cfg.lut).parent
    atomic_write_text(out_dir / "validation.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "actions.csv", actions.to_csv(index=False))
    pred, raw, meas = (df[c].to_numpy() for c in ("predicted_ms", "raw_ms", "measured_ms"))
    figures = {"calibrated": error_stats(pred, meas), "raw": error_stats(raw, meas), "actions": sign_stats(actions)}
    if now is not None:
        figures["recalibrated"] = error_stats(df["recalibrated_ms"].to_numpy(), meas)
        figures["drift"] = now["drift"]
    print(report(df, figures, table))
    from nas.plots import plot_lut_validation

    plot_lut_validation(raw, meas, pred, out_dir / "validation.png", title=table.describe())
    log.info("wrote %s, %s and %s", out_dir / "validation.csv", out_dir / "actions.csv", out_dir / "validation.png")
    df.attrs.update(figures)
    return df


def recalibration(
    table: LatencyTable, fit: list[tuple[ArchSpec, float]], measured: dict[str, dict]
) -> dict[str, float] | None:
    """The table's calibration networks as re-timed now: the scale they give today, and the machine's drift
    since the build (median of now / then; +5% = the machine runs 5% slower now). None without calibration."""
    if len(fit) < 3:
        return None
    now = np.array([measured[encode_stages(s)]["ms"] for s, _ in fit])
    then = np.array([ms for _, ms in fit])
    raw = np.array([table.raw(s) for s, _ in fit])
    return {"scale": Calibration.fit(raw, now).scale, "drift": float(np.median(now / then) - 1)}


def network_frame(
    specs: list[ArchSpec], measured: dict[str, dict], table: LatencyTable, now: dict[str, float] | None = None
) -> pd.DataFrame:
    meas = [measured[encode_stages(s)] for s in specs]
    df = pd.DataFrame(
        {
            "arch": [encode_stages(s) for s in specs],
            "kind": ["uniform" if k % 2 == 0 else "slimmer-like" for k in range(len(specs))],
            "raw_ms": [table.raw(s) for s in specs],
            "predicted_ms": [table.predict(s) for s in specs],
            "measured_ms": [m["ms"] for m in meas],
            "measured_p25_ms": [m["p25_ms"] for m in meas],
            "measured_p75_ms": [m["p75_ms"] for m in meas],
        }
    )
    df["pct_err"] = (df["predicted_ms"] - df["measured_ms"]) / df["measured_ms"] * 100
    df["raw_pct_err"] = (df["raw_ms"] - df["measured_ms"]) / df["measured_ms"] * 100
    if now is not None:  # what `nas.build_lut recalibrate=true` would predict, fitted on the calibration set alone
        df["recalibrated_ms"] = df["raw_ms"] * now["scale"]
    return df


def action_frame(pairs: list[tuple], measured: dict[str, dict], table: LatencyTable) -> pd.DataFrame:
    rows = []
    for base, action, variant in pairs:
        rows.append(
            {
                "action": action,
                "base": encode_stages(base),
                "variant": encode_stages(variant),
                "predicted_diff_ms": table.predict(base) - table.predict(variant),
                "measured_diff_ms": measured[encode_stages(base)]["ms"] - measured[encode_stages(variant)]["ms"],
                "row_noise_ms": table.noise(base, variant),
            }
        )
    return pd.DataFrame(rows)


def sign_stats(actions: pd.DataFrame) -> dict[str, float]:
    """Sign agreement of measured with predicted differences, among those above the rows' own spread."""
    if actions.empty:  # action_pairs=0
        return {"pairs": 0, "above_noise": 0, "sign_agree": np.nan}
    above = actions[actions["predicted_diff_ms"].abs() > actions["row_noise_ms"]]
    agree = np.sign(above["predicted_diff_ms"]) == np.sign(above["measured_diff_ms"])
    return {
        "pairs": len(actions),
        "above_noise": len(above),
        "sign_agree": float(agree.mean()) if len(above) else np.nan,
    }


def report(df: pd.DataFrame, figures: dict[str, dict[str, float]], table: LatencyTable) -> str:
    lines = [
        f"LUT {table.source} ({table.describe()})",
        f"{len(df)} held-out networks ({(df['kind'] == 'uniform').sum()} uniform, "
        f"{(df['kind'] != 'uniform').sum()} slimmer-like), none of them a calibration network",
        f"{'':<24}{'median |err|':>13}{'within ±10%':>13}{'Spearman':>10}{'median err':>12}{'worst':>9}",
    ]
    rows = [("predict (calibrated)", "calibrated"), ("raw sum of rows", "raw")]
    if "recalibrated" in figures:
        rows.append(("recalibrated now", "recalibrated"))
    for name, key in rows:
        s = figures[key]
        lines.append(
            f"{name:<24}{s['median_abs_pct_err']:>12.1f}%{s['within_10pct'] * 100:>12.0f}%"
            f"{s['spearman']:>10.3f}{s['median_signed_pct_err']:>+11.1f}%{s['worst_abs_pct_err']:>8.1f}%"
        )
    if "drift" in figures:
        lines.append(
            f"machine drift since the build (its calibration networks re-timed now): {figures['drift'] * 100:+.1f}%; "
            f"'recalibrated now' is what `nas.build_lut recalibrate=true` gives (fitted on those networks alone)"
        )
    a = figures["actions"]
    lines.append(
        f"single-action differences: {a['pairs']} pairs, {a['above_noise']} predicted above the rows' spread, "
        f"measured sign agrees for {a['sign_agree'] * 100:.0f}%"
        if a["pairs"]
        else "single-action differences: none measured (action_pairs=0)"
    )
    lines.append("worst cases (predict):")
    worst = df.reindex(df["pct_err"].abs().sort_values(ascending=False).index).head(3)
    for r in worst.itertuples():
        lines.append(
            f"  {r.arch} ({r.kind}): predicted {r.predicted_ms:.3f} ms, measured {r.measured_ms:.3f} ms "
            f"({r.pct_err:+.1f}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    config_main("validate_lut", ValidateLUTConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
