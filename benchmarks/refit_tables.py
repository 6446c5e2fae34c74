"""Kept LUTs read again with and without their rows' weights, on their own validation measurements (issue #21).

    python benchmarks/refit_tables.py benchmarks/results/lut_configs_run5_xeon_tables

Each subfolder holds a build's `lut.csv` and the `validation.csv` that `nas.validate_lut` wrote beside it
(`benchmarks/lut_repeatability.py --keep DIR` keeps them). Both readings use the same measurements, so the comparison
is paired and times nothing: "without" loads the table with its `weights` column dropped (as a table written before
that column: the `memory` correction is not tried), "with" loads it with each row's deployed weights (computed from
the row where the table lacks them: `latency_lut.measure.item_weights`, no timing). For each: the chosen
correction with its leave-one-out error, within +-10% as built and with each group's drift removed ('now'),
Spearman now and the worst error now, over the validation's held-out networks. Tables that are incomplete (an
interrupted build) are named and skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.build import table_items  # noqa: E402
from latency_lut.measure import item_weights  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from latency_lut.validation import reread  # noqa: E402


def readings(table: LatencyTable, val: pd.DataFrame) -> dict[str, object]:
    """The table's figures on the validation's networks: as built, and each divided by its group's drift."""
    cal, now = reread(table, val)
    c = table.calibration
    return {
        "correction": c.name,
        "cv_error": c.cv_error,
        "within10_cal": cal["within_10pct"],
        "within10_now": now["within_10pct"],
        "spearman_now": now["spearman"],
        "worst_now": now["worst_abs_pct_err"],
    }


def both_ways(folder: Path) -> dict[str, object]:
    """One kept build read without and with its rows' weights."""
    df = LatencyTable.load(folder / "lut.csv").df
    base = LatencyTable(df).base_spec()
    val = pd.read_csv(folder / "validation.csv")
    without = LatencyTable(df.drop(columns="weights"))
    with_weights = df.assign(weights=[item_weights(it, base) for it in table_items(df, base)])
    row = {"build": folder.name}
    for name, table in (("without", without), ("with", LatencyTable(with_weights))):
        row.update({f"{k}_{name}": v for k, v in readings(table, val).items()})
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of kept builds (one subfolder each, with lut.csv and validation.csv)")
    a = p.parse_args()
    rows = []
    for sub in sorted(Path(a.folder).iterdir()):
        if not (sub / "lut.csv").is_file() or not (sub / "validation.csv").is_file():
            print(f"{sub.name}: skipped (no lut.csv and validation.csv)")
            continue
        try:
            rows.append(both_ways(sub))
        except Exception as e:  # an interrupted build: its table cannot price its own networks
            print(f"{sub.name}: skipped ({' '.join(str(e).split())[:100]})")
    print(f"\n{'build':<24}{'without weights':>52}   {'with weights':>52}")
    for r in rows:
        cells = []
        for name in ("without", "with"):
            v = {k: r[f"{k}_{name}"] for k in ("correction", "cv_error", "within10_cal", "within10_now")}
            v.update(rho=r[f"spearman_now_{name}"], worst=r[f"worst_now_{name}"])
            cells.append(
                f"{v['correction']:>7} ({v['cv_error'] * 100:4.1f}%) ±10% {v['within10_cal'] * 100:4.0f}%"
                f" / now {v['within10_now'] * 100:4.0f}%  ρ {v['rho']:.3f}  worst {v['worst']:5.1f}%"
            )
        print(f"{r['build']:<24}{cells[0]:>52}   {cells[1]:>52}")


if __name__ == "__main__":
    main()
