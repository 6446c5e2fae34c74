"""How much do fresh builds of the same latency table disagree, and does each one predict whole networks?

    python benchmarks/lut_repeatability.py                          # tiny space; torch and onnxruntime; 3 builds each
    python benchmarks/lut_repeatability.py --backends torch --builds 2

For each backend the LUT is built `--builds` times from scratch (`nas.build_lut` with its defaults, each into
a fresh folder), and each build is validated by `nas.validate_lut` with its defaults: 40 held-out networks (half
uniform, half slimmer-like, none a calibration network) measured on the spot, plus 20 slimmer-like networks with
one action each. Reported per backend:

* per-row disagreement between builds: (max - min) / median of each layer row's ms, over rows above 5 us;
* whole-network disagreement: the same for `predict` of the 40 held-out networks;
* each build's calibration scale and its validation figures (calibrated and raw), every build, not the best;
* the machine's drift between the build and its validation (the build's calibration networks re-timed with the
  held-out ones), and the figures recalibrated on those networks alone (`nas.build_lut recalibrate=true`).

Builds and validations run one after another, never two timings at once. Output: a table on stdout,
benchmarks/results/lut_repeatability.{txt,csv}, and every held-out network of every build (predicted, raw,
measured) in lut_repeatability_networks.csv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.table import KEY_COLUMNS, LAYER_KINDS, LatencyTable, decode_stages  # noqa: E402
from nas.build_lut import BuildLUTConfig  # noqa: E402
from nas.build_lut import run as build_lut  # noqa: E402
from nas.config import compose  # noqa: E402
from nas.validate_lut import ValidateLUTConfig  # noqa: E402
from nas.validate_lut import run as validate_lut  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def spread(values: np.ndarray) -> np.ndarray:
    """(max - min) / median along axis 1, in %."""
    return (values.max(1) - values.min(1)) / np.median(values, 1) * 100


def build_and_validate(backend: str, b: int, space: str, work: Path) -> tuple[dict, LatencyTable, pd.DataFrame]:
    """Build `b`-th fresh LUT of `backend` and validate it; its row of figures, the table and the validation."""
    lut = work / f"{backend}-{b}" / "lut.csv"
    t0 = time.time()
    build_lut(compose("build_lut", [f"space={space}", f"backend={backend}", f"out={lut}"], BuildLUTConfig))
    build_s, t0 = time.time() - t0, time.time()
    df = validate_lut(compose("validate_lut", [f"space={space}", f"lut={lut}"], ValidateLUTConfig))
    table = LatencyTable.load(lut)
    cal, raw, act, now = df.attrs["calibrated"], df.attrs["raw"], df.attrs["actions"], df.attrs["recalibrated"]
    row = {"backend": backend, "build": b + 1, "build_s": round(build_s, 1), "validate_s": round(time.time() - t0, 1)}
    row.update(scale=round(table.calibration.scale, 4), within10_cal=cal["within_10pct"])
    row.update(within10_raw=raw["within_10pct"], within10_now=now["within_10pct"], drift=df.attrs["drift"])
    row.update(spearman_now=now["spearman"], worst_now=now["worst_abs_pct_err"])
    row.update(median_abs_err_cal=cal["median_abs_pct_err"], median_err_raw=raw["median_signed_pct_err"])
    row.update(worst_cal=cal["worst_abs_pct_err"], spearman_cal=cal["spearman"], sign_agree=act["sign_agree"])
    row.update(pairs_above_noise=act["above_noise"], networks=len(df))
    return row, table, df


def agreement(backend: str, tables: list[tuple[LatencyTable, pd.DataFrame]]) -> dict:
    """How much the builds disagree: per layer row, and per validation network's prediction."""
    layer = [t.df[t.df["kind"].isin(LAYER_KINDS)].set_index(KEY_COLUMNS)["ms"] for t, _ in tables]
    ms = pd.concat(layer, axis=1).dropna().to_numpy()
    ms = ms[ms.min(1) > 0.005]
    base = tables[0][0].base_spec()
    specs = [decode_stages(a, base) for a in tables[0][1]["arch"]]
    r, n = spread(ms), spread(np.array([[t.predict(s) for t, _ in tables] for s in specs]))
    agree = {"backend": backend, "rows": len(ms), "row_spread_median": float(np.median(r))}
    agree.update(row_spread_p90=float(np.percentile(r, 90)), row_spread_max=float(r.max()))
    agree.update(net_spread_median=float(np.median(n)), net_spread_max=float(n.max()))
    return agree


def one_backend(backend: str, builds: int, space: str, work: Path) -> tuple[list[dict], dict, list[pd.DataFrame]]:
    """Each build's figures, the disagreement between builds, and each build's held-out networks."""
    done = [build_and_validate(backend, b, space, work) for b in range(builds)]
    frames = [df.assign(backend=backend, build=row["build"]) for row, _, df in done]
    return [row for row, _, _ in done], agreement(backend, [(table, df) for _, table, df in done]), frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--builds", type=int, default=3)
    p.add_argument("--space", default="tiny")
    a = p.parse_args()
    t_start = time.time()
    per_build, agreement, nets = [], [], []
    with tempfile.TemporaryDirectory() as work:
        for backend in a.backends:
            rows, agree, frames = one_backend(backend, a.builds, a.space, Path(work))
            per_build += rows
            agreement.append(agree)
            nets += frames
    builds = pd.DataFrame(per_build)
    networks = pd.concat(nets, ignore_index=True)
    lines = [
        f"LUT repeatability: space={a.space}, {a.builds} fresh builds per backend, each validated on the same held-out "
        f"networks ({builds['networks'].iloc[0]}); {time.time() - t_start:.0f} s in all",
        "",
        "Disagreement between builds ((max-min)/median, %):",
        f"{'backend':<13}{'rows':>6}{'row median':>12}{'row p90':>9}{'row max':>9}{'net median':>12}{'net max':>9}",
    ]
    for g in agreement:
        lines.append(
            f"{g['backend']:<13}{g['rows']:>6}{g['row_spread_median']:>11.1f}%{g['row_spread_p90']:>8.1f}%"
            f"{g['row_spread_max']:>8.1f}%{g['net_spread_median']:>11.1f}%{g['net_spread_max']:>8.1f}%"
        )
    lines += [
        "",
        "Validation of each build (cal = predict as built; raw = plain sum; now = recalibrated on the 12 calibration",
        "networks re-timed with the held-out ones; drift = how much slower the machine ran than during the build):",
        f"{'backend':<13}{'build':>6}{'scale':>7}{'±10% cal':>10}{'±10% raw':>10}{'|err| cal':>10}{'raw bias':>10}"
        f"{'worst cal':>10}{'Spearman':>9}{'sign ok':>9}{'drift':>8}{'±10% now':>10}{'worst now':>10}{'build s':>8}",
    ]
    for r in per_build:
        lines.append(
            f"{r['backend']:<13}{r['build']:>6}{r['scale']:>7.3f}{r['within10_cal'] * 100:>9.0f}%"
            f"{r['within10_raw'] * 100:>9.0f}%{r['median_abs_err_cal']:>9.1f}%{r['median_err_raw']:>+9.1f}%"
            f"{r['worst_cal']:>9.1f}%{r['spearman_cal']:>9.3f}{r['sign_agree'] * 100:>8.0f}%{r['drift'] * 100:>+7.1f}%"
            f"{r['within10_now'] * 100:>9.0f}%{r['worst_now']:>9.1f}%{r['build_s']:>8.1f}"
        )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(RESULTS / "lut_repeatability.txt", text + "\n")
    atomic_write_text(RESULTS / "lut_repeatability.csv", builds.to_csv(index=False))
    atomic_write_text(RESULTS / "lut_repeatability_networks.csv", networks.to_csv(index=False))


if __name__ == "__main__":
    main()
