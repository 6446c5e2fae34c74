"""Which reading should a table predict from: its rows read against the sentinel, or as timed? Every kept table,
read both ways and as `LatencyTable(reading="auto")` chooses, on its own validation (nothing timed).

    python benchmarks/reading_choice.py benchmarks/results/lut_configs_run{5,6,7,8,9}_xeon_tables

Each folder is a `lut_repeatability.py --keep` folder (DIR/<backend-threads-size-batch>-<k>/lut.csv and
validation.csv) beside its `OUT.csv`, whose drift per build decides whether the as-built share counts toward the
goal (drift under 3%). The goal per table: at least 29 of 30 within ±10% now, Spearman now at least 0.99, and as
built at least 90% when the drift is under 3%.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.table import LatencyTable  # noqa: E402
from latency_lut.validation import reread  # noqa: E402


def goal(cal: dict, now: dict, drift: float) -> bool:
    return (
        now["within_10pct"] >= 29 / 30 - 1e-9
        and now["spearman"] >= 0.99
        and (abs(drift) >= 0.03 or cal["within_10pct"] >= 0.9)
    )


def rows(folder: Path) -> list[dict]:
    runs = pd.read_csv(folder.parent / (folder.name.removesuffix("_tables") + ".csv"))
    drift = {f"{r.config.replace(':', '-')}-{int(r.build) - 1}": float(r.drift) for r in runs.itertuples()}
    out = []
    for build in sorted(p for p in folder.iterdir() if (p / "lut.csv").is_file() and (p / "validation.csv").is_file()):
        val = pd.read_csv(build / "validation.csv")
        row = {"run": folder.name.removesuffix("_tables"), "table": build.name}
        for reading in ("sentinel", "timed", "auto"):
            t = LatencyTable.load(build / "lut.csv", reading=reading)
            cal, now = reread(t, val)
            row[f"{reading}_cv"] = t.calibration.cv_error
            row[f"{reading}_now"], row[f"{reading}_rho"] = now["within_10pct"], now["spearman"]
            row[f"{reading}_goal"] = goal(cal, now, drift[build.name])
            if reading == "auto":
                row["chosen"] = t.reading
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    a = p.parse_args()
    df = pd.DataFrame([r for f in a.folders for r in rows(f)])
    print(f"{'run':<32}{'table':<24}{'cv sentinel':>12}{'cv timed':>9}  chosen    now s / t / auto    rho s / t / auto")
    for r in df.itertuples():
        print(
            f"{r.run:<32}{r.table:<24}{r.sentinel_cv * 100:>11.1f}%{r.timed_cv * 100:>8.1f}%  {r.chosen:<9}"
            f"{r.sentinel_now * 100:>4.0f} /{r.timed_now * 100:>4.0f} /{r.auto_now * 100:>4.0f}%   "
            f"{r.sentinel_rho:.3f} / {r.timed_rho:.3f} / {r.auto_rho:.3f}"
        )
    print()
    for run, g in df.groupby("run", sort=False):
        print(
            f"{run}: goal met by {int(g.sentinel_goal.sum())} of {len(g)} tables read against the sentinel, "
            f"{int(g.timed_goal.sum())} as timed, {int(g.auto_goal.sum())} as chosen "
            f"({int((g.chosen == 'timed').sum())} chose the rows as timed)"
        )


if __name__ == "__main__":
    main()
