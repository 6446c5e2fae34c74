"""What does the host gate cost a LUT build? (issue #21 item 3; benchmarks/README.md section 9)

    python benchmarks/gate_cost.py                                  # torch, 1 thread, 64 px: 3 rounds
    python benchmarks/gate_cost.py --rounds 4 --config onnxruntime:2:64:1
    python benchmarks/gate_cost.py --fast                           # the CI's short settings (.ci/wheel_round_trip.sh)

Each round builds the same fresh `tiny` LUT twice, with the gate (`measure.gate_pct=10`, the default) and without it
(`measure.gate_pct=0`), in a freshly shuffled order, one build after the other, never two at once. Reported per
round: both wall times, their ratio and the share of group passes the gate measured again; then the median ratio and
its range over the rounds. `--fast` uses the wheel round trip's settings (1 warm-up run, 2 rounds of 2 runs, groups
of 4, 6 calibration networks), where each timing is short and the sentinel's own readings scatter most.

Output: a table on stdout and in `OUT.txt`, one row per build in `OUT.csv`.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lut_repeatability import GateLine, overrides  # noqa: E402

from latency_lut.bundle_measure import device_name  # noqa: E402
from nas.build_lut import BuildLUTConfig  # noqa: E402
from nas.build_lut import run as build_lut  # noqa: E402
from nas.config import compose  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FAST = ["measure.warmup=1", "measure.rounds=2", "measure.runs_per_round=2", "measure.interleave=4"]
FAST += ["calibration_networks=6"]


def build(config: str, gate: bool, extra: list[str], out: Path) -> dict:
    """One fresh build; its wall time and what the gate did."""
    args = [*overrides(config, "tiny")[0], *extra, f"measure.gate_pct={10 if gate else 0}", f"out={out}"]
    t0 = time.perf_counter()
    with GateLine() as line:
        build_lut(compose("build_lut", args, BuildLUTConfig))
    return {"gate": gate, "seconds": time.perf_counter() - t0, **line.counts()}


def summarize(rows: list[dict]) -> list[str]:
    """One line per round (gate on / off wall times, ratio, share re-measured), then the median ratio and range."""
    df = pd.DataFrame(rows)
    lines, ratios = [], []
    for r, d in df.groupby("round"):
        on, off = d[d["gate"]].iloc[0], d[~d["gate"]].iloc[0]
        ratios.append(on["seconds"] / off["seconds"])
        share = on["gate_remeasured"] / on["gate_passes"] * 100 if on["gate_passes"] else float("nan")
        lines.append(
            f"round {r}: gate on {on['seconds']:6.1f} s, off {off['seconds']:6.1f} s, ratio {ratios[-1]:.2f}; "
            f"the gate measured {on['gate_remeasured']} of {on['gate_passes']} group passes again ({share:.0f}%), "
            f"{on['gate_still_slow']} stayed slow"
        )
    lines.append(
        f"gate on / off: median {np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} over "
        f"{len(ratios)} rounds"
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="torch:1:64:1", help="backend:threads:input_size:batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fast", action="store_true", help="the wheel round trip's short measure settings")
    p.add_argument("--seed", type=int, default=0, help="the order of the two builds in each round")
    p.add_argument("--out", default=None, help="output prefix (OUT.txt, OUT.csv)")
    a = p.parse_args()
    overrides(a.config, "tiny")  # a malformed configuration fails now
    rng, rows = random.Random(a.seed), []
    with tempfile.TemporaryDirectory() as work:
        for r in range(1, a.rounds + 1):
            arms = [True, False]
            rng.shuffle(arms)
            for gate in arms:
                out = Path(work) / f"r{r}-{'on' if gate else 'off'}.csv"
                rows.append({"round": r, **build(a.config, gate, FAST if a.fast else [], out)})
    head = (
        f"host gate cost: {a.config}, tiny, {'the CI short settings' if a.fast else 'default settings'}; "
        f"CPU {device_name()}; {a.rounds} rounds, each building the LUT with and without the gate in shuffled order"
    )
    text = "\n".join([head, *summarize(rows)])
    print(text)
    if a.out:
        atomic_write_text(Path(a.out).with_suffix(".txt"), text + "\n")
        atomic_write_text(Path(a.out).with_suffix(".csv"), pd.DataFrame(rows).to_csv(index=False))


if __name__ == "__main__":
    main()
