"""Is a Spearman of 0.99 against one validation within reach of the validation's own noise? (issue #21, nothing timed)

    python benchmarks/rank_repeatability.py benchmarks/results/lut_configs_run11_xeon_networks.csv --out OUT

`lut_repeatability.py` times each build's 30 held-out networks twice, minutes apart, by two protocols: the
validation's (interleaved groups read against their references: `measured_ms`) and the independent one (each network
alone, back-to-back runs: `alone_ms`). With the table's prediction at the machine's speed now (`recalibrated_ms`),
that is three readings of the same networks, each with its own error. Per build, their rank correlations:

* PA: the table against the validation, the "Spearman now" the goal asks to be at least 0.99;
* PB: the table against the independent protocol;
* AB: the two measurements of the same networks against each other.

If the three errors are independent, a correlation of two readings is the product of each one's correlation with the
true latencies (triple collocation), so the table's own rank fidelity is sqrt(PA * PB / AB), free of the
measurements' noise, and the validation's ceiling, what an exact table would score against it, is
sqrt(PA * AB / PB). The identity is exact for linear correlations and close for Spearman's near 1; the readings share
the machine and the references, so the errors are not fully independent, and 30 networks leave a wide sampling error
(the 90% interval is a bootstrap over networks). A guide to whose noise a miss is, not a measurement of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.errors import run_cli  # noqa: E402
from supernet.errors import UserError  # noqa: E402
from supernet.files import atomic_write_text, read_csv  # noqa: E402

NEED = ["config", "build", "recalibrated_ms", "measured_ms", "alone_ms"]


def triad(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Three readings of the same items: their pairwise Spearman correlations, the first reading's estimated
    correlation with the truth (`fidelity`) and the second's (`ceiling`), by triple collocation.

    >>> t = np.arange(10.0)
    >>> r = triad(t, t, t)
    >>> round(r["fidelity"], 9), round(r["ceiling"], 9)
    (1.0, 1.0)
    """
    pa, pb, ab = (float(spearmanr(x, y)[0]) for x, y in ((p, a), (p, b), (a, b)))
    return {
        "pa": pa,
        "pb": pb,
        "ab": ab,
        "fidelity": float(np.sqrt(max(pa * pb / ab, 0.0))),
        "ceiling": float(np.sqrt(max(pa * ab / pb, 0.0))),
    }


def bootstrap(p: np.ndarray, a: np.ndarray, b: np.ndarray, key: str, n: int = 1000, seed: int = 0) -> np.ndarray:
    """The 5th and 95th percentiles of `triad(...)[key]` over resamples of the items."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(p), len(p))
        if len(set(i)) > 3:
            vals.append(triad(p[i], a[i], b[i])[key])
    return np.quantile(vals, [0.05, 0.95])


def read(paths: list[Path]) -> pd.DataFrame:
    frames = []
    for f in paths:
        df = read_csv(f, UserError)
        if not set(NEED) <= set(df.columns):
            raise UserError(f"{f}: not a lut_repeatability.py networks CSV ({', '.join(NEED)})")
        frames.append(df.assign(run=f.stem.removesuffix("_networks")))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csvs", nargs="+", type=Path, help="lut_repeatability.py OUT_networks.csv files")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "rank_repeatability")
    a = p.parse_args()
    df = read(a.csvs).dropna(subset=NEED[2:])
    lines = [
        "PA = table against the validation (Spearman now); PB = table against the independent protocol; AB = the two",
        "measurements against each other; fidelity = the table against the true latencies, sqrt(PA*PB/AB); ceiling =",
        "what an exact table would score against the validation, sqrt(PA*AB/PB); [5%, 95%] by bootstrap over networks",
        "",
        f"{'run':<26}{'config':<20}{'b':>2}{'PA':>7}{'PB':>7}{'AB':>7}{'fidelity':>10}{'[5%, 95%]':>16}{'ceiling':>9}",
    ]
    rows = []
    for (run, config, build), g in df.groupby(["run", "config", "build"], sort=False):
        x = [g[c].to_numpy(float) for c in ("recalibrated_ms", "measured_ms", "alone_ms")]
        r = triad(*x)
        lo, hi = bootstrap(*x, key="fidelity")
        rows.append(r)
        lines.append(
            f"{run:<26}{config:<20}{build:>2}{r['pa']:>7.3f}{r['pb']:>7.3f}{r['ab']:>7.3f}{r['fidelity']:>10.3f}"
            f"   [{lo:.3f}, {hi:.3f}]{r['ceiling']:>9.3f}"
        )
    res = pd.DataFrame(rows)
    lines += [
        "",
        f"{len(res)} builds: Spearman now (PA) >= 0.99 in {(res.pa >= 0.99).sum()}; estimated fidelity >= 0.99 in "
        f"{(res.fidelity >= 0.99).sum()}; the validation's ceiling below 0.99 in {(res.ceiling < 0.99).sum()}; the "
        f"two measurements agree (AB) below 0.99 in {(res.ab < 0.99).sum()}",
        f"medians: PA {res.pa.median():.3f}, AB {res.ab.median():.3f}, fidelity {res.fidelity.median():.3f}, "
        f"ceiling {res.ceiling.median():.3f}",
    ]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(a.out.with_suffix(".txt"), text + "\n")


if __name__ == "__main__":
    run_cli(main)
