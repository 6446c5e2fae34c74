"""How close to its target can a state sit and still never re-measure above it? (issue #21, nothing timed)

    python benchmarks/share_noise.py benchmarks/results/verify_targets_xeon_*.csv --out OUT

Every row of `verify_targets.py`'s CSVs holds one emitted architecture re-measured twice, independently, drift
removed (`drift_removed_1_ms`, `drift_removed_2_ms`). Half the spread of their log ratio is the noise of one such
re-measurement (sigma: from the standard deviation, and robustly from the median absolute deviation). With that
noise, a state whose true latency is `share` x its target re-measures above the target with probability
1 - Phi(-ln(share) / sigma), and 10 targets re-measured twice stay all at or below with that to the 20th power
(readings taken as independent: two passes of one run share its drift, so this is a rough guide). Printed: those
probabilities for shares 0.94 to 0.99, and the share at which "none of 20 above" holds with probability 0.9.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.errors import run_cli  # noqa: E402
from supernet.errors import UserError  # noqa: E402
from supernet.files import atomic_write_text, read_csv  # noqa: E402

SHARES = (0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def sigmas(log_ratio: np.ndarray) -> dict[str, float]:
    """One re-measurement's noise (log scale) from the log ratios of pairs: SD and 1.4826 x MAD, over sqrt(2).

    >>> s = sigmas(np.array([0.02, -0.02, 0.02, -0.02]))
    >>> round(s["sd"], 5), round(s["mad"], 5)
    (0.01633, 0.02097)
    """
    mad = 1.4826 * np.median(np.abs(log_ratio - np.median(log_ratio)))
    return {"sd": float(np.std(log_ratio, ddof=1) / np.sqrt(2)), "mad": float(mad / np.sqrt(2))}


def p_above(share: float, sigma: float) -> float:
    """The chance that one re-measurement of a state at `share` x its target reads above the target.

    >>> round(p_above(1.0, 0.02), 3), p_above(0.9, 1e-9) < 1e-12
    (0.5, True)
    """
    return float(1 - norm.cdf(-np.log(share) / sigma))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csvs", nargs="+", type=Path)
    p.add_argument("--readings", type=int, default=20, help="re-measurements that must all stay at or below (20)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "share_noise")
    a = p.parse_args()
    need = ["drift_removed_1_ms", "drift_removed_2_ms"]
    frames = []
    for f in a.csvs:
        frames.append(read_csv(f, UserError))
        if not set(need) <= set(frames[-1].columns):
            raise UserError(f"{f}: not a verify_targets.py CSV with two re-measurements ({', '.join(need)})")
    df = pd.concat(frames, ignore_index=True)
    lr = np.log(df["drift_removed_1_ms"] / df["drift_removed_2_ms"]).dropna().to_numpy()
    sig = sigmas(lr)
    lines = [
        f"{len(lr)} architectures re-measured twice (drift removed), from {len(a.csvs)} files; |log ratio| median "
        f"{np.median(np.abs(lr)):.4f}, 90th percentile {np.quantile(np.abs(lr), 0.9):.4f}",
        "",
        f"{'share':>6}"
        + "".join(f"  P(one above), sigma {k} {v:.4f}  P(none of {a.readings})" for k, v in sig.items()),
    ]
    for s in SHARES:
        row = f"{s:6.2f}"
        for v in sig.values():
            q = p_above(s, v)
            row += f"  {q:27.3f}  {(1 - q) ** a.readings:17.3f}"
        lines.append(row)
    z = norm.ppf(0.9 ** (1 / a.readings))
    lines += ["", f"share at which none of {a.readings} re-measurements is above with probability 0.9:"]
    lines += [f"  sigma {k}: {np.exp(-z * v):.4f}" for k, v in sig.items()]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(a.out.with_suffix(".txt"), text + "\n")


if __name__ == "__main__":
    run_cli(main)
