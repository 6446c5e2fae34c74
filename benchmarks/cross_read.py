"""Was a miss the table's or its validation's? Each build's table read on both builds' validations.

    python benchmarks/cross_read.py benchmarks/results/lut_configs_run6_xeon_tables

`lut_repeatability.py --keep DIR` keeps every build's table and validation (DIR/<backend-threads-size-batch>-<k>/).
The two validations of a configuration time the same 30 held-out networks (the same seed) against the same
calibration networks, at different times. Each table is read on both (`latency_lut.validation.reread`, each
group's drift removed against the table's own calibration networks; nothing is timed): a table that misses on both
is the build's miss; one that misses on its own validation only was read in a noisy validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.table import LatencyTable  # noqa: E402
from latency_lut.validation import reread  # noqa: E402


def cross(folder: Path) -> pd.DataFrame:
    """One row per (configuration, table, validation): '±10% now' and Spearman now."""
    builds = sorted(p for p in folder.iterdir() if (p / "lut.csv").is_file() and (p / "validation.csv").is_file())
    by_config: dict[str, list[Path]] = {}
    for p in builds:
        by_config.setdefault(p.name.rsplit("-", 1)[0], []).append(p)
    rows = []
    for config, paths in by_config.items():
        tables = {p.name: LatencyTable.load(p / "lut.csv") for p in paths}
        for p in paths:
            val = pd.read_csv(p / "validation.csv")
            for name, table in tables.items():
                _, now = reread(table, val)
                rows.append(
                    {
                        "config": config,
                        "table": name,
                        "validation": p.name,
                        "own": name == p.name,
                        "within10_now": now["within_10pct"],
                        "spearman_now": now["spearman"],
                    }
                )
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a lut_repeatability.py --keep folder")
    a = p.parse_args()
    df = cross(Path(a.folder))
    print(f"{'table':<24}{'on its own validation':>28}{'on the other validation':>28}")
    for table, g in df.groupby("table", sort=True):
        own, other = g[g["own"]], g[~g["own"]]
        cells = [
            f"{r.within10_now * 100:>5.0f}%, Spearman {r.spearman_now:.3f}" for r in (own.iloc[0], *other.itertuples())
        ]
        print(f"{table:<24}" + "".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    main()
