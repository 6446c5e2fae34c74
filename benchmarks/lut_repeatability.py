"""Does the LUT method hold on every configuration, on every fresh build? (issue #21)

    python benchmarks/lut_repeatability.py                            # the 6 default configurations, 2 builds each
    python benchmarks/lut_repeatability.py --configs torch:1:64:1 onnxruntime:2:64:1 --builds 3
    python benchmarks/lut_repeatability.py --out benchmarks/results/lut_configs_run2

A configuration is backend:threads:input_size:batch, each a "device" of its own. For each, the LUT is built
`--builds` times from scratch (`nas.build_lut` with its defaults: 24 calibration networks x 3 visits, the
correction chosen by leave-one-out error), and each build is validated by `nas.validate_lut` on 30 held-out
networks (half uniform, half slimmer-like, none a calibration network) and 10 slimmer-like networks with one
action each, with the independent protocol on (`independent=true`). Reported for every build, not the best:

* the chosen correction and its leave-one-out error, and how much the machine's speed varied during the build;
* within +-10% as built, the drift since the build, within +-10% with each group's drift removed ('now'), Spearman
  and the worst error, as built and now; within +-10% as built over the networks whose own group drifted by less
  than 3% ('steady', with their count);
* the host gate during the build: the share of group passes it measured again because the host ran slow (the CSV
  also has the passes that ran slow, `gate_slow`);
* the independent protocol (each network alone, back-to-back runs, shuffled blocks): within +-10% with its
  global drift removed, and its distance from the build's protocol against its own spread;
* the per-row disagreement between a configuration's builds;
* the same build's table as timed, without reading its passes against the sentinel (`LatencyTable.load(reading=
  "timed")`, the rows' `raw_ms`), on the same validation measurements: a paired comparison of `measure.normalize`;
* where the build varied more than `rebuild_above` and was built again, the table set aside, on the same
  validation measurements (a paired comparison of the rebuild).

Builds and validations run one after another, never two timings at once. Output: a table on stdout, `OUT.txt`,
`OUT.csv` (one row per build) and `OUT_networks.csv` (every held-out network of every build).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.build import aside_path  # noqa: E402
from latency_lut.bundle_measure import device_name  # noqa: E402
from latency_lut.table import KEY_COLUMNS, LAYER_KINDS, LatencyTable  # noqa: E402
from latency_lut.validation import reread  # noqa: E402
from nas.build_lut import BuildLUTConfig  # noqa: E402
from nas.build_lut import run as build_lut  # noqa: E402
from nas.config import compose  # noqa: E402
from nas.validate_lut import ValidateLUTConfig  # noqa: E402
from nas.validate_lut import run as validate_lut  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ["torch:1:64:1", "onnxruntime:1:64:1", "torch:2:64:1", "onnxruntime:2:64:1", "torch:1:96:1"]
CONFIGS += ["onnxruntime:1:64:4"]


def overrides(config: str, space: str) -> tuple[list[str], list[str]]:
    """(build_lut overrides, validate_lut overrides) of a backend:threads:input_size:batch configuration."""
    backend, threads, size, batch = config.split(":")
    common = [f"space={space}", f"space.input_size={int(size)}"]
    return [*common, f"backend={backend}", f"threads={int(threads)}", f"batch={int(batch)}"], common


def build_and_validate(
    config: str, b: int, a: argparse.Namespace, work: Path
) -> tuple[dict, LatencyTable, pd.DataFrame]:
    """The `b`-th fresh LUT of `config`, built and validated; its row of figures, the table and the validation."""
    lut = work / f"{config.replace(':', '-')}-{b}" / "lut.csv"
    build, validate = overrides(config, a.space)
    build, validate = build + a.measure, validate + [o for o in a.measure if o.startswith(("measure.", "space."))]
    t0 = time.time()
    with GateLine() as gate:
        build_lut(compose("build_lut", [*build, f"out={lut}"], BuildLUTConfig))
    build_s, t0 = time.time() - t0, time.time()
    more = [f"lut={lut}", f"samples={a.samples}", "action_pairs=10", "independent=true", *a.validate]
    df = validate_lut(compose("validate_lut", [*validate, *more], ValidateLUTConfig))
    table = LatencyTable.load(lut)
    c, f = table.calibration, df.attrs
    cal, raw, now, alone = f["calibrated"], f["raw"], f["recalibrated"], f["alone_drift_removed"]
    row = {"config": config, "build": b + 1, "build_s": round(build_s, 1), "validate_s": round(time.time() - t0, 1)}
    row.update(correction=c.name, cv_error=c.cv_error, host_variation=table.host_variation, drift=f["drift"])
    row.update(reading=table.reading)  # the reading the table chose (LatencyTable reading="auto")
    row.update(within10_cal=cal["within_10pct"], within10_now=now["within_10pct"], within10_raw=raw["within_10pct"])
    row.update(spearman_cal=cal["spearman"], spearman_now=now["spearman"], worst_cal=cal["worst_abs_pct_err"])
    row.update(worst_now=now["worst_abs_pct_err"], median_abs_err_now=now["median_abs_pct_err"])
    row.update(within10_alone=alone["within_10pct"], spearman_alone=alone["spearman"], alone_drift=f["alone_drift"])
    row.update(alone_gap=f["alone_agreement"]["median_gap"], alone_spread=f["alone_agreement"]["median_spread"])
    row.update(sign_agree=f["actions"]["sign_agree"], networks=len(df))
    steady = f.get("steady", {"within_10pct": np.nan, "networks": 0})
    row.update(within10_steady=steady["within_10pct"], steady_networks=steady["networks"], **gate.counts())
    timed = LatencyTable.load(lut, reading="timed")
    cal_t, now_t = reread(timed, df)
    row.update(host_variation_timed=table.host_variation_as_timed, within10_cal_timed=cal_t["within_10pct"])
    row.update(within10_now_timed=now_t["within_10pct"], spearman_cal_timed=cal_t["spearman"])
    row.update(spearman_now_timed=now_t["spearman"], correction_timed=timed.calibration.name)
    aside = aside_path(lut, 0)
    row["rebuilt"] = aside.exists()
    if aside.exists():  # the build varied more than rebuild_above: the table set aside, on the same validation
        other = LatencyTable.load(aside)
        cal_o, now_o = reread(other, df)
        row.update(host_variation_set_aside=other.host_variation, within10_cal_set_aside=cal_o["within_10pct"])
        row.update(within10_now_set_aside=now_o["within_10pct"], spearman_now_set_aside=now_o["spearman"])
    return row, table, df


class GateLine(logging.Handler):
    """Catches the build's 'host gate: L of P group passes ran slow ...; R of them ... measured again; S stayed slow'
    line (latency_lut/build.py, bundle_measure.Gate.describe)."""

    PATTERN = re.compile(
        r"host gate: (?P<l>\d+) of (?P<p>\d+) group passes .*; (?P<r>\d+) of them.*; (?P<s>\d+) stayed"
    )

    def __init__(self):
        super().__init__(logging.INFO)
        self.match = None

    def emit(self, record: logging.LogRecord) -> None:
        self.match = self.PATTERN.search(record.getMessage()) or self.match

    def __enter__(self) -> GateLine:
        logger = logging.getLogger("latency_lut.build")
        self.level = logger.level
        logger.setLevel(logging.INFO)  # this script does not set up logging: INFO would be dropped before handlers
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("latency_lut.build")
        logger.removeHandler(self)
        logger.setLevel(self.level)

    def counts(self) -> dict[str, int]:
        slow, r, p, s = (int(self.match[k]) for k in "lrps") if self.match else (0, 0, 0, 0)
        return {"gate_slow": slow, "gate_remeasured": r, "gate_passes": p, "gate_still_slow": s}


def row_spread(tables: list[LatencyTable]) -> float:
    """The median over layer rows above 5 us of (max - min) / median across builds, in %."""
    layer = [t.df[t.df["kind"].isin(LAYER_KINDS)].set_index(KEY_COLUMNS)["ms"] for t in tables]
    ms = pd.concat(layer, axis=1).dropna().to_numpy()
    ms = ms[ms.min(1) > 0.005]
    return float(np.median((ms.max(1) - ms.min(1)) / np.median(ms, 1) * 100))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="backend:threads:input_size:batch")
    p.add_argument("--builds", type=int, default=2)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--space", default="tiny")
    p.add_argument("--out", default=str(RESULTS / "lut_configs"), help="output prefix (OUT.txt, OUT.csv, ...)")
    p.add_argument(
        "--measure", nargs="*", default=[], help="extra build_lut overrides (measure.* and space.* also validate's)"
    )
    p.add_argument("--validate", nargs="*", default=[], help="extra validate_lut overrides")
    p.add_argument("--keep", help="keep every build's LUT and validation here (default: a temporary folder)")
    a = p.parse_args()
    for c in a.configs:
        overrides(c, a.space)  # a malformed configuration fails now, not an hour in
    t_start = time.time()
    rows, nets, spreads = [], [], {}
    with tempfile.TemporaryDirectory() if a.keep is None else contextlib.nullcontext(a.keep) as work:
        for config in a.configs:
            done = []
            for b in range(a.builds):
                done.append(build_and_validate(config, b, a, Path(work)))
                rows.append(done[-1][0])
                nets.append(done[-1][2].assign(config=config, build=b + 1))
                write(Path(a.out), rows, nets)  # every finished build at once: a long run loses at most one
            spreads[config] = row_spread([t for _, t, _ in done]) if len(done) > 1 else float("nan")
    lines = [
        f"LUT method across configurations: space={a.space}, {a.builds} fresh builds each, {a.samples} held-out "
        f"networks per validation; CPU {device_name()}; {time.time() - t_start:.0f} s in all",
        "config = backend:threads:input:batch; host = the machine's variation during the build (calibration visits);",
        "cal = predict as built; now = each group's drift removed (its reference networks); alone = the independent",
        "protocol with its global drift removed; gap = its median distance from the build's protocol (spread: its own)",
        "steady = as built, over the networks whose group drifted < 3% (count); gate = the share of the build's group",
        "passes that the host gate measured again (slow passes of groups with at least half their passes slow)",
        "as timed = the same build's table without reading its passes against the sentinel (raw_ms), on the same",
        "validation: its host variation, ±10% as built and now, Spearman now (side by side with the table's own)",
        "",
        f"{'config':<20}{'b':>2}{'correction':>11}{'cv err':>7}{'host':>6}{'gate':>6}{'drift':>7}{'±10% cal':>9}"
        f"{'steady':>11}{'±10% now':>9}"
        f"{'ρ cal':>7}{'ρ now':>7}{'worst now':>10}{'±10% alone':>11}{'gap':>6}{'spread':>7}{'sign':>6}{'rows±':>7}"
        f"  | as timed:{'host':>6}{'±10% cal':>9}{'now':>6}{'ρ now':>7}",
    ]
    for r in rows:
        gate = r["gate_remeasured"] / r["gate_passes"] * 100 if r["gate_passes"] else float("nan")
        lines.append(
            f"{r['config']:<20}{r['build']:>2}{r['correction']:>11}{r['cv_error'] * 100:>6.1f}%"
            f"{r['host_variation'] * 100:>5.1f}%{gate:>5.0f}%{r['drift'] * 100:>+6.1f}%{r['within10_cal'] * 100:>8.0f}%"
            f"{r['within10_steady'] * 100:>6.0f}% ({r['steady_networks']:>2})"
            f"{r['within10_now'] * 100:>8.0f}%{r['spearman_cal']:>7.3f}{r['spearman_now']:>7.3f}{r['worst_now']:>9.1f}%"
            f"{r['within10_alone'] * 100:>10.0f}%{r['alone_gap'] * 100:>5.1f}%{r['alone_spread'] * 100:>6.1f}%"
            f"{r['sign_agree'] * 100:>5.0f}%{spreads[r['config']]:>6.1f}%  |          "
            f"{r['host_variation_timed'] * 100:>5.1f}%{r['within10_cal_timed'] * 100:>8.0f}%"
            f"{r['within10_now_timed'] * 100:>5.0f}%{r['spearman_now_timed']:>7.3f}"
        )
    for r in rows:
        if r["rebuilt"]:
            lines.append(
                f"{r['config']} build {r['build']} was built again (rebuild_above): the table set aside varied by "
                f"{r['host_variation_set_aside'] * 100:.1f}% and reads, on the same validation, "
                f"{r['within10_cal_set_aside'] * 100:.0f}% as built, {r['within10_now_set_aside'] * 100:.0f}% now, "
                f"Spearman now {r['spearman_now_set_aside']:.3f}"
            )
    text = "\n".join(lines)
    print(text)
    atomic_write_text(Path(a.out).with_suffix(".txt"), text + "\n")


def write(out: Path, rows: list[dict], nets: list[pd.DataFrame]) -> None:
    atomic_write_text(out.with_suffix(".csv"), pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(out.with_name(out.name + "_networks.csv"), pd.concat(nets, ignore_index=True).to_csv(index=False))


if __name__ == "__main__":
    main()
