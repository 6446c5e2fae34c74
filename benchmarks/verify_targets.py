"""Do emitted architectures meet their latency targets when they run? With and without `nas.slim --verify`.

    python benchmarks/verify_targets.py --supernet runs/pipeline/supernet/supernet.pt --lut runs/pipeline/lut/lut.csv

Slims one supernet to `--targets` targets spread geometrically over the space's range (from 95% of the start
latency down to `--low` of it), once plainly (each target gets the first state *predicted* at or below it) and
once with `--verify` (the first state *measured* at or below it, then refilled under the measured latency). Then every
emitted architecture of both runs is re-measured independently, `--passes` times, all in interleaved rounds with
the LUT's calibration networks as references (`latency_lut.measure_networks`, the LUT's backend and settings), and
compared with its target: raw, and with each group's drift since the build removed. The share of the target used
is the drift-removed re-measurement / target. Output: `--out` .txt and .csv (default
benchmarks/results/verify_targets).

    python benchmarks/verify_targets.py --supernet SN --lut ORT_LUT --remote --out benchmarks/results/remote_verify

`--ablate swap` adds one more `--verify` run per named on/off `Rules` switch, with that switch flipped from the
default (e.g. "verify +swap": the refill with block exchanges, off by default; "verify -retype": without block
types changed), slimmed on the same LUT and re-measured in the same interleaved groups as the others, so the
switch's effect on the share is read side by side.

`--remote` replaces `--verify` by the remote round trip (nas/search/remote.py) for a LUT of a backend that can be
bundled (onnxruntime): `nas.slim bundle=DIR` writes the candidate states, the bundle's own `measure.py` times them
(run here, in its folder, as on a device), and `nas.slim from_timings=DIR` emits each target's state. The report
adds the bundle's own measurement of each emitted state (`measured_ms` in arch.yaml) beside the independent
re-measurements.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_networks  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from nas.config import compose  # noqa: E402
from nas.search.slimmer import METHODS  # noqa: E402
from nas.slim import SlimConfig  # noqa: E402
from nas.slim import run as slim  # noqa: E402
from supernet.arch import ArchSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def emitted(out: Path, targets: list[float]) -> list[tuple[ArchSpec, dict]]:
    found = []
    for t in targets:
        path = out / f"target_{t:g}ms" / "arch.yaml"
        found.append((ArchSpec.load(path), yaml.safe_load(path.read_text())["meta"]))
    return found


def spread_targets(start_ms: float, n: int, low: float) -> list[float]:
    """`n` targets spread geometrically from 0.95x to `low`x the start latency (ms, rounded to 3 decimals).

    >>> spread_targets(2.0, 3, 0.25)
    [1.9, 0.975, 0.5]
    """
    return [round(float(t), 3) for t in np.geomspace(0.95 * start_ms, low * start_ms, n)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--lut", required=True)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--low", type=float, default=0.35, help="lowest target as a fraction of the start latency")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--remote", action="store_true", help="the remote round trip (bundle=, measure.py, from_timings=)")
    p.add_argument("--ablate", nargs="*", default=[], help="Rules switches (e.g. swap), each flipped in one more run")
    p.add_argument("--out", default=str(RESULTS / "verify_targets"), help="output prefix (OUT.txt, OUT.csv)")
    a = p.parse_args()
    for name in a.ablate:
        if not isinstance(getattr(METHODS["default"], name, None), bool):
            p.error(f"--ablate {name}: not an on/off rule of nas.search.slimmer.Rules")
    return a


def slim_both_ways(a: argparse.Namespace) -> tuple[list[float], dict[str, list[tuple[ArchSpec, dict]]]]:
    """The targets (geometric, from 0.95x to `low`x the start latency) and what nas.slim emits for them, plain and
    with --verify (with --remote: through a verify bundle timed by its own measure.py)."""
    inputs = [f"supernet={a.supernet}", f"lut={a.lut}"]
    with tempfile.TemporaryDirectory() as work:
        probe = slim(compose("slim", [*inputs, f"out={work}/probe", "target_ms=[1000]"], SlimConfig))
        start = float(pd.read_csv(probe / "trajectory.csv")["predicted_ms"].iloc[0])
        targets = spread_targets(start, a.targets, a.low)
        runs = {}
        over = [*inputs, f"out={work}/plain", f"target_ms={targets}"]
        if a.remote:
            bundle = Path(work) / "bundle"
            runs["plain"] = emitted(slim(compose("slim", [*over, f"bundle={bundle}"], SlimConfig)), targets)
            subprocess.run([sys.executable, "measure.py"], cwd=bundle, check=True)
            over = [*inputs, f"out={work}/remote", f"target_ms={targets}", f"from_timings={bundle}"]
            runs["remote"] = emitted(slim(compose("slim", over, SlimConfig)), targets)
        else:
            runs["plain"] = emitted(slim(compose("slim", over, SlimConfig)), targets)
            over = [*inputs, f"out={work}/verify", f"target_ms={targets}", "verify=true"]
            runs["verify"] = emitted(slim(compose("slim", over, SlimConfig)), targets)
            for name in a.ablate:  # the default rules with one switch flipped, registered for nas.slim's method=
                on = not getattr(METHODS["default"], name)
                method = f"default-{'with' if on else 'no'}-{name}"
                METHODS[method] = replace(METHODS["default"], **{name: on})
                over = [*inputs, f"out={work}/{method}", f"target_ms={targets}", "verify=true", f"method={method}"]
                runs[f"verify {'+' if on else '-'}{name}"] = emitted(slim(compose("slim", over, SlimConfig)), targets)
    return targets, runs


def remeasure(specs: list[ArchSpec], table: LatencyTable, passes: int) -> list[list[dict]]:
    """Every emitted network, re-measured independently `passes` times (each a fresh interleaved measurement, with
    the table's calibration networks as references in every group)."""
    backend = make_backend(str(table.meta["backend"]), int(table.meta["threads"]))
    backend.setup()
    cfg, batch, refs = MeasureConfig(), int(table.meta["batch"]), table.networks()
    return [measure_networks(specs, backend, cfg, batch, 100 + k, references=refs) for k in range(passes)]


def result_frame(targets: list[float], runs: dict, passes: list[list[dict]]) -> pd.DataFrame:
    rows = []
    for i, t in enumerate(targets):
        for j, name in enumerate(runs):
            spec, meta = runs[name][i]
            k = j * len(targets) + i
            row = {"target_ms": t, "run": name, "predicted_ms": meta["predicted_ms"]}
            row["measured_by_verify_ms"] = meta["measured_ms"]
            row.update({f"remeasured_{q + 1}_ms": p[k]["ms"] for q, p in enumerate(passes)})
            row.update({f"drift_removed_{q + 1}_ms": p[k]["ms"] / p[k]["drift"] for q, p in enumerate(passes)})
            row["refill"] = "; ".join(meta.get("refill", []))
            row["val_loss"] = meta["val_loss"]  # the supernet's, on the search's images: the same for every run
            rows.append({**row, "step": meta["slimming_step"], "arch": spec.describe()})
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, header: str, runs: list[str]) -> str:
    re_cols = [c for c in df.columns if c.startswith("remeasured_")]
    lines = [header, f"{'target':>8} {'run':<13}{'predicted':>10}{'verify':>9}"]
    lines[-1] += "".join(f"{'re' + str(q + 1):>9}" for q in range(len(re_cols))) + "  step  architecture"
    for r in df.itertuples():
        verified = r.measured_by_verify_ms is not None and not pd.isna(r.measured_by_verify_ms)
        v = f"{r.measured_by_verify_ms:>9.3f}" if verified else f"{'-':>9}"
        res = "".join(f"{getattr(r, c):>9.3f}" for c in re_cols)
        lines.append(f"{r.target_ms:>8.3f} {r.run:<13}{r.predicted_ms:>10.3f}{v}{res}  {r.step:>4}  {r.arch}")
    dr_cols = [c for c in df.columns if c.startswith("drift_removed_")]
    for name in runs:
        sub = df[df["run"] == name]
        kinds = pd.Series([m.split()[0] for moves in sub["refill"] for m in moves.split("; ") if m]).value_counts()
        lines.append(
            f"{name}: refill moves in the emitted states: "
            + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none")
            + f" ({(sub['refill'] != '').sum()} of {len(sub)} targets refilled); predicted share of the target: "
            f"median {np.median(sub['predicted_ms'] / sub['target_ms']) * 100:.1f}%; supernet loss of the emitted "
            f"states: median {sub['val_loss'].median():.4f}"
        )
        own = sub["measured_by_verify_ms"].dropna()
        if len(own):
            target = sub.loc[own.index, "target_ms"]
            own_share = (own / target * 100).to_numpy()
            lines.append(
                f"{name}, its own measurement ({'the bundle' if name == 'remote' else '--verify'}): above target in "
                f"{(own > target).sum()} of {len(own)} targets; share of the target used: "
                f"median {np.median(own_share):.1f}%, from {own_share.min():.1f}% to {own_share.max():.1f}%"
            )
        for label, cols in (("raw", re_cols), ("drift removed", dr_cols)):
            over = [(sub[c] > sub["target_ms"]).sum() for c in cols]
            worst = max(((sub[c] - sub["target_ms"]) / sub["target_ms"] * 100).max() for c in cols)
            share = np.concatenate([(sub[c] / sub["target_ms"]).to_numpy() for c in cols]) * 100
            lines.append(
                f"{name}, {label}: re-measured above target in {', '.join(map(str, over))} of {len(sub)} targets "
                f"(per pass); worst {worst:+.1f}% of the target; share of the target used: median "
                f"{np.median(share):.1f}%, from {share.min():.1f}% to {share.max():.1f}%"
            )
    return "\n".join(lines)


def main() -> None:
    a = parse_args()
    t_start = time.time()
    table = LatencyTable.load(a.lut)
    targets, runs = slim_both_ways(a)
    passes = remeasure([spec for name in runs for spec, _ in runs[name]], table, a.passes)
    df = result_frame(targets, runs, passes)
    header = (
        f"Targets kept on measurement: {len(targets)} targets from {targets[0]} to {targets[-1]} ms, LUT {a.lut} "
        f"({table.describe()}); {a.passes} independent re-measurement passes; {time.time() - t_start:.0f} s in all"
    )
    text = report(df, header, list(runs))
    print(text)
    atomic_write_text(Path(a.out).with_suffix(".txt"), text + "\n")
    atomic_write_text(Path(a.out).with_suffix(".csv"), df.to_csv(index=False))


if __name__ == "__main__":
    main()
