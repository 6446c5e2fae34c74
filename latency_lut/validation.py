"""Does a LUT predict whole networks, and their differences? (`python -m nas.validate_lut` runs `validate_lut`.)

Held-out networks: `samples` networks disjoint from the table's calibration networks, half drawn uniformly from
the space and half shaped like the slimmer's states (near-full networks with a few MetaPaths dropped, a stage
emptied or narrowed, with and without MB3D). Each whole fused deploy network is measured on the LUT's own backend
and settings, all of them interleaved in shuffled rounds, and compared with `predict` (calibrated) and with the
raw sum, side by side: median absolute % error, the share within +-10%, Spearman rank correlation.

Drift: every interleaved group also times `measure.references` of the table's own calibration networks, whose
latency at build time the table holds (`measure_networks(references=...)`). Their ratio now / then is the
machine's drift since the build, read per group: 'recalibrated now' compares each network, divided by its own
group's drift, with `predict`, so that a slow period of the host that covers one group cancels instead of
deciding. The median over the held-out networks of their groups' drift is the global drift, printed beside the
as-built figures (the held-out networks stay out of every fit). The as-built figures are also given over the
networks whose own group drifted by less than `STEADY_DRIFT` ('as built, steady groups'): how the table predicts
while the machine runs as it did during the build.

Independent protocol (`independent=true`): the same held-out networks, and the calibration networks for the
drift, timed again the way a deployment benchmark times a model (`measure_alone`: each network alone, warm-up,
back-to-back runs, their median; networks cycled in shuffled blocks). Reported raw and with its global drift
removed, and how far it lies from the build's protocol against its own block-to-block spread.

Action differences: for `action_pairs` slimmer-like networks, one slimming action each (drop one MetaPath,
narrow one stage by the width step, remove one MB3D) gives a pair whose latency difference is both predicted and
measured (in the same interleaved rounds). Reported: the share of pairs whose measured sign agrees with the
predicted one, among pairs whose predicted difference exceeds the rows' own spread (p75 - p25 of the rows that
differ), since the slimmer's choices rest on such differences.

Writes validation.csv and actions.csv beside the LUT (or in out=).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from latency_lut.backends import make_backend
from latency_lut.measure import MeasureConfig, measure_alone, measure_networks
from latency_lut.sampling import mixed_specs, slimmer_like_spec
from latency_lut.table import LatencyTable, LUTError, decode_stages, encode_stages
from supernet.arch import ArchSpec
from supernet.files import atomic_write_text
from supernet.space import SpaceConfig, choices_of, first_mb3d, resized, stages_of, with_path

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
    independent: bool = False  # also time the held-out networks as a deployment benchmark does (measure_alone)
    independent_runs: int = 100  # back-to-back runs per network per block, after 10 warm-up runs ...
    independent_blocks: int = 5  # ... in this many shuffled blocks
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # as nas.build_lut times its calibration networks


STEADY_DRIFT = 0.03  # a group whose references ran within this of their build-time latency ran as during the build


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


def reread(table: LatencyTable, df: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """`table`'s figures on a kept validation's measurements (`df`: validation.csv), nothing timed: as built, and
    with each network's group drift removed ('recalibrated now'). The drift is read again from the group's
    references (their ms now) against `table`'s own calibration networks, so another table of the same networks
    (the same build as timed, or refitted) is read against its own readings of them."""
    then = [ms for _, ms in table.networks()]

    def drift(refs: object) -> float:
        pairs = [x.split(":") for x in refs.split(";")] if isinstance(refs, str) and refs else []
        return float(np.median([float(ms) / then[int(k)] for k, ms in pairs])) if pairs else 1.0

    base = table.base_spec()
    pred = np.array([table.predict(decode_stages(a, base)) for a in df["arch"]])
    meas = df["measured_ms"].to_numpy()
    return error_stats(pred, meas), error_stats(pred * np.array([drift(r) for r in df["references"]]), meas)


def action_variants(spec: ArchSpec, rng: random.Random, step: int) -> list[tuple[str, ArchSpec]]:
    """One of each slimming action applied to `spec`, where it applies: drop a random block, narrow a random
    stage by `step`, remove the first MB3D."""
    choices, widths = choices_of(spec.stages)
    out = []
    if sum(spec.depths) > 1:
        i = rng.choice([i for i, s in enumerate(spec.stages) if s.depth])
        out.append(("drop_path", with_path(choices, i, rng.randrange(spec.stages[i].depth), "id"), widths))
    narrowable = [i for i, w in enumerate(widths) if w - step > 0]
    if narrowable:
        out.append(("narrow_stage", choices, resized(widths, rng.choice(narrowable), -step)))
    mb3d = first_mb3d(choices)
    if mb3d is not None and sum(spec.depths) > 1:
        out.append(("remove_mb3d", with_path(choices, *mb3d, "id"), widths))
    return [(a, spec.replace(stages=stages_of(c, w)).validate()) for a, c, w in out]


@dataclass
class Validation:
    """What `validate_lut` measured: one row per held-out network, one per action pair, and the figures."""

    networks: pd.DataFrame
    actions: pd.DataFrame
    figures: dict[str, object]
    table: LatencyTable

    def report(self) -> str:
        return report(self.networks, self.figures, self.table)


def validate_lut(cfg: ValidateLUTConfig) -> Validation:
    """Time `cfg.samples` held-out networks and `cfg.action_pairs` action pairs on the LUT's own backend and
    settings, compare them with its predictions, and write validation.csv and actions.csv."""
    table = LatencyTable.load(cfg.lut)
    if cfg.samples < 3:
        raise LUTError(f"samples={cfg.samples}: need at least 3 networks for error and rank statistics")
    meta = table.meta
    if cfg.independent and (cfg.independent_runs < 1 or cfg.independent_blocks < 1):
        raise LUTError("independent_runs and independent_blocks must be at least 1")
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
    groups = [[s] for s in specs] + list(units.values())
    with tqdm(total=len(specs) + len(pair_specs), desc="validating (interleaved)", unit="net") as bar:
        stats = measure_networks(groups, backend, cfg.measure, int(meta["batch"]), cfg.seed + 2, fit, bar)
    measured = {encode_stages(s): st for s, st in zip(specs + pair_specs, stats)}
    df = network_frame(specs, measured, table)
    actions = action_frame(pairs, measured, table)
    pred, raw, meas = (df[c].to_numpy() for c in ("predicted_ms", "raw_ms", "measured_ms"))
    figures: dict[str, object] = {
        "calibrated": error_stats(pred, meas),
        "raw": error_stats(raw, meas),
        "actions": sign_stats(actions),
    }
    if fit:
        figures["recalibrated"] = error_stats(df["recalibrated_ms"].to_numpy(), meas)
        figures["drift"] = float(np.median(df["drift"]) - 1)
        steady = df[(df["drift"] - 1).abs() < STEADY_DRIFT]
        if len(steady) >= 3:  # too few for a rank correlation otherwise
            figures["steady"] = error_stats(steady["predicted_ms"].to_numpy(), steady["measured_ms"].to_numpy())
            figures["steady"]["networks"] = len(steady)
    if cfg.independent:
        figures.update(independent_protocol(cfg, specs, fit, backend, int(meta["batch"]), df))
    out_dir = output_dir(cfg)
    atomic_write_text(out_dir / "validation.csv", df.to_csv(index=False))
    atomic_write_text(out_dir / "actions.csv", actions.to_csv(index=False))
    log.info("wrote %s and %s", out_dir / "validation.csv", out_dir / "actions.csv")
    return Validation(df, actions, figures, table)


def output_dir(cfg: ValidateLUTConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path(cfg.lut).parent


def independent_protocol(
    cfg: ValidateLUTConfig,
    specs: list[ArchSpec],
    fit: list[tuple[ArchSpec, float]],
    backend,
    batch: int,
    df: pd.DataFrame,
) -> dict[str, object]:
    """The held-out networks timed by `measure_alone`, with the calibration networks for the global drift; adds
    columns to `df` and returns the figures (raw, drift removed, agreement with the build's protocol)."""
    nets = specs + [s for s, _ in fit]
    with tqdm(total=len(nets) * cfg.independent_blocks, desc="independent protocol", unit="net") as bar:
        st = measure_alone(
            nets,
            backend,
            batch,
            cfg.independent_runs,
            cfg.independent_blocks,
            seed=cfg.seed + 3,
            progress=bar,
        )
    alone, refs = st[: len(specs)], st[len(specs) :]
    drift = float(np.median([r["ms"] / ms for r, (_, ms) in zip(refs, fit)])) if fit else 1.0
    df["alone_ms"] = [r["ms"] for r in alone]
    df["alone_spread"] = [r["spread"] for r in alone]
    pred = df["predicted_ms"].to_numpy()
    build_now = df["measured_ms"] / df["drift"]  # the build's protocol, each group's drift removed
    gap = np.abs(df["alone_ms"] / drift / build_now - 1)
    return {
        "alone_raw": error_stats(pred, df["alone_ms"].to_numpy()),
        "alone_drift_removed": error_stats(pred * drift, df["alone_ms"].to_numpy()),
        "alone_drift": drift - 1,
        "alone_agreement": {
            "median_gap": float(np.median(gap)),
            "median_spread": float(np.median(df["alone_spread"])),
            "within_spread": float(np.mean(gap <= df["alone_spread"])),
        },
    }


def network_frame(specs: list[ArchSpec], measured: dict[str, dict], table: LatencyTable) -> pd.DataFrame:
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
            "drift": [m["drift"] for m in meas],  # its group's references: now / at build (1 without references)
            # which of the table's calibration networks its group timed as references, and their ms now
            "references": [";".join(f"{k}:{ms:.6g}" for k, ms in m["references"]) for m in meas],
        }
    )
    df["pct_err"] = (df["predicted_ms"] - df["measured_ms"]) / df["measured_ms"] * 100
    df["raw_pct_err"] = (df["raw_ms"] - df["measured_ms"]) / df["measured_ms"] * 100
    df["recalibrated_ms"] = df["predicted_ms"] * df["drift"]  # the prediction at the machine's speed now
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
        table.steadiness(),
        f"{len(df)} held-out networks ({(df['kind'] == 'uniform').sum()} uniform, "
        f"{(df['kind'] != 'uniform').sum()} slimmer-like), none of them a calibration network",
        f"{'':<34}{'median |err|':>13}{'within ±10%':>13}{'Spearman':>10}{'median err':>12}{'worst':>9}",
    ]
    rows = [("predict (as built)", "calibrated"), ("raw sum of rows", "raw")]
    if "steady" in figures:
        rows.append((f"as built, steady groups ({figures['steady']['networks']})", "steady"))
    if "recalibrated" in figures:
        rows.append(("recalibrated now (group drift)", "recalibrated"))
    if "alone_raw" in figures:
        rows += [
            ("independent protocol, raw", "alone_raw"),
            ("independent, global drift removed", "alone_drift_removed"),
        ]
    for name, key in rows:
        s = figures[key]
        lines.append(
            f"{name:<34}{s['median_abs_pct_err']:>12.1f}%{s['within_10pct'] * 100:>12.0f}%"
            f"{s['spearman']:>10.3f}{s['median_signed_pct_err']:>+11.1f}%{s['worst_abs_pct_err']:>8.1f}%"
        )
    if "drift" in figures:
        lines.append(
            f"machine drift since the build: {figures['drift'] * 100:+.1f}% (median over networks of their group's "
            f"references, now / at build; per group from {df['drift'].min() * 100 - 100:+.1f}% to "
            f"{df['drift'].max() * 100 - 100:+.1f}%); 'recalibrated now' divides each network by its own group's "
            f"drift; 'steady groups': the networks whose group drifted by less than {STEADY_DRIFT * 100:.0f}% (count)"
        )
    if "alone_agreement" in figures:
        a, spread = figures["alone_agreement"], figures["alone_agreement"]["median_spread"] * 100
        lines.append(
            f"independent protocol: global drift {figures['alone_drift'] * 100:+.1f}% (its statistic included); once "
            f"drift is removed it lies a median {a['median_gap'] * 100:.1f}% from the build's protocol, against its "
            f"own block-to-block spread of {spread:.1f}% (within it for {a['within_spread'] * 100:.0f}%)"
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
