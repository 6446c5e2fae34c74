"""Does the choice of reference networks move a drift-removed reading? (issue #21, `--verify`'s reading)

    python benchmarks/reference_choice.py --lut runs/bench/refs1/lut.csv --out benchmarks/results/reference_choice_run1

`nas.slim --verify` measures a few states at a time (at most `interleave - references` = 6, neighbours on the
trajectory), each call one group with the LUT's calibration networks as references. `measure_networks` cycles its
references from the first in every call, and the calibration networks are sorted by size, so every `--verify` group
has read its drift from the two smallest networks of the table, whatever the size of the states it measured. The
independent re-measurements (`verify_targets.py`, `nas.validate_lut`) measure many networks in one call, so their
groups cycle through all the references.

This times `--networks` held-out networks (`mixed_specs`, spread over the size range, none a calibration network),
sorted by prediction and cut into windows of 6 neighbours, as `--verify` measures them, in three styles:

* `smallest`: each window in its own call with the table's references (what `--verify` did: the two smallest);
* `nearest`: each window in its own call with the `references` calibration networks nearest in build latency to
  the window's median prediction (`nearest_references`);
* `cycled`: all networks in one call, references cycling (the independent re-measurement's way).

Each of `--rounds` rounds times every style once, in a shuffled order, with fresh seeds. Reported per style: the
median of (drift-removed reading / the same round's `cycled` reading), which is the bias of a style against the
re-measurement, with its range over rounds; and the share of networks within +-10% of the prediction, drift
removed, with the median absolute error. Output: `--out` .txt and .csv.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.bundle_measure import device_name  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_networks  # noqa: E402
from latency_lut.sampling import encode_stages, mixed_specs  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from latency_lut.validation import ValidateLUTConfig, error_stats  # noqa: E402
from nas.config import compose  # noqa: E402
from nas.errors import run_cli  # noqa: E402
from supernet.arch import ArchSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STYLES = ("smallest", "nearest", "cycled")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lut", required=True, help="a torch or onnxruntime LUT with calibration networks")
    p.add_argument("--networks", type=int, default=24, help="held-out networks (default 24)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each timing every style once (default 3)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", type=Path, default=RESULTS / "reference_choice")
    return p.parse_args()


def nearest_references(
    references: Sequence[tuple[ArchSpec, float]], predicted_ms: Sequence[float], n: int
) -> list[tuple[ArchSpec, float]]:
    """The `n` references (networks with their latency at build time) nearest in that latency to the median of
    `predicted_ms`, in their original order: for a group of similar networks, references that run like them, so
    that their drift is the drift of networks of that size (`measure_networks` reads a group against them).

    >>> refs = [("a", 0.7), ("b", 0.8), ("c", 1.5), ("d", 2.6), ("e", 2.7)]
    >>> [name for name, _ in nearest_references(refs, [2.4, 2.5, 3.0], 2)]
    ['d', 'e']
    >>> [name for name, _ in nearest_references(refs, [1.4], 2)]
    ['b', 'c']
    """
    mid = float(np.median(predicted_ms))
    keep = sorted(range(len(references)), key=lambda k: (abs(references[k][1] - mid), k))[: max(n, 0)]
    return [references[k] for k in sorted(keep)]


def held_out(lut: Path, n: int, seed: int) -> tuple[LatencyTable, ValidateLUTConfig, list[ArchSpec]]:
    """The table at `lut`, its space's validation config, and `n` networks spread over the size range, none a
    calibration network, sorted by prediction (neighbours in a window, as on a slimming trajectory)."""
    table = LatencyTable.load(lut)
    cfg = compose("validate_lut", [f"lut={lut}"], ValidateLUTConfig)
    exclude = {encode_stages(s) for s, _ in table.networks()}
    specs = mixed_specs(cfg.space, cfg.num_classes, n, seed, table.width_step or 16, exclude, spread=True)
    return table, cfg, sorted(specs, key=table.predict)


def write(out: Path, text: str, df: pd.DataFrame) -> None:
    """The report, printed and written to `out`.txt beside every reading in `out`.csv."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".txt"), text + "\n")
    atomic_write_text(out.with_suffix(".csv"), df.to_csv(index=False))


def timed(style: str, specs, table: LatencyTable, backend, cfg: MeasureConfig, seed: int) -> list[float]:
    """Each spec's drift-removed reading (ms / its group's drift), measured the `style` way."""
    refs, batch, window = table.networks(), int(table.meta["batch"]), max(cfg.interleave - cfg.references, 1)
    if style == "cycled":
        return [r["ms"] / r["drift"] for r in measure_networks(specs, backend, cfg, batch, seed, references=refs)]
    out = []
    for k in range(0, len(specs), window):
        part = specs[k : k + window]
        pred = [table.predict(s) for s in part]
        use = refs if style == "smallest" else nearest_references(refs, pred, cfg.references)
        out += [r["ms"] / r["drift"] for r in measure_networks(part, backend, cfg, batch, seed + k, references=use)]
    return out


def main() -> None:
    a = parse_args()
    t0 = time.time()
    table, _, specs = held_out(a.lut, a.networks, a.seed)
    pred = np.array([table.predict(s) for s in specs])
    backend = make_backend(str(table.meta["backend"]), int(table.meta["threads"]))
    backend.setup()
    mcfg, rng, rows = MeasureConfig(), random.Random(a.seed), []
    for r in range(a.rounds):
        order = list(STYLES)
        rng.shuffle(order)
        for k, style in enumerate(order):
            ms = timed(style, specs, table, backend, mcfg, a.seed + 1000 * r + 100 * k)
            rows += [
                {"round": r, "style": style, "network": i, "predicted_ms": p, "ms": m}
                for i, (p, m) in enumerate(zip(pred, ms))
            ]
            print(f"round {r + 1}/{a.rounds}: {style} done ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    header = (
        f"Reference choice on {device_name()}, LUT {a.lut} ({table.describe()}; host variation "
        f"{table.host_variation:.1%}); {a.networks} held-out networks ({pred.min():.3f}-{pred.max():.3f} ms "
        f"predicted), {a.rounds} rounds; {time.time() - t0:.0f} s"
    )
    write(a.out, header + "\n\n" + report(df), df)


def report(df: pd.DataFrame) -> str:
    """Each style against `cycled` and against the prediction (`error_stats`, as `nas.validate_lut` reads a
    prediction's error: relative to the measurement), and smallest / nearest by network."""
    wide = df.pivot_table(index=["round", "network"], columns="style", values="ms")
    lines = ["style     vs cycled: median (range over rounds)   within +-10% of prediction   median |error|"]
    for style in STYLES:
        ratio = (wide[style] / wide["cycled"]).groupby(level="round").median()
        mine = df[df["style"] == style]
        err = error_stats(mine["predicted_ms"].to_numpy(), mine["ms"].to_numpy())
        overall = np.median(wide[style] / wide["cycled"]) - 1
        lines.append(
            f"{style:9s} {overall:+7.2%} ({ratio.min() - 1:+.2%} to {ratio.max() - 1:+.2%})"
            f"{'':17s}{err['within_10pct']:6.1%}{'':23s}{err['median_abs_pct_err'] / 100:6.2%}"
        )
    by_size = (wide["smallest"] / wide["nearest"]).groupby(level="network").median() - 1
    pred = df.groupby("network")["predicted_ms"].first()
    lines += ["", "smallest / nearest by network (median over rounds), in prediction order:"]
    lines += [f"  {pred[i]:.3f} ms  {b:+.2%}" for i, b in by_size.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
