"""The README's main job (`python -m nas.pipeline --target-ms 1.0`) under named sets of overrides, side by side:
wall time per step and the found model's test top-1 (issue #23).

    python benchmarks/main_job.py              # fp32 NCHW training against the defaults, seeds 0 and 1 (~40 min)
    python benchmarks/main_job.py --variants issue-23 defaults --seeds 0 1 2   # issue #23's job against today's
    python benchmarks/main_job.py --report     # the report again from the kept runs

Each (variant, seed) is one fresh process with its own supernet, LUT, slimming, training and export, so every
figure is measured from scratch. The runs go in ABBA order over seeds (A B for the first seed, B A for the next,
...) so that a slow period of the shared host does not fall on one variant only. `train.seed=` seeds the supernet's
and the found model's training. Runs are kept under --work; a complete run is not repeated (delete it to measure
again). Written to benchmarks/results/main_job.{csv,txt} (another prefix: --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.table import LatencyTable  # noqa: E402
from supernet.arch import ArchSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ["train_supernet", "build_lut", "slim", "train", "export"]
# Before issue #23's last change the recipe trained in fp32 with NCHW tensors; the defaults now train in bf16 where
# the CPU has bf16 instructions, with channels-last. `issue-23` is the job issue #23 measured (1093 s): the soft
# supernet, trained in fp32 with NCHW tensors.
VARIANTS = {
    "fp32-nchw": ["train.amp=off", "train.channels_last=false"],
    "defaults": [],
    "issue-23": ["supernet.hard=false", "train.amp=off", "train.channels_last=false"],
}


def abba(variants: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(variant, seed) with the order of the variants reversed on every other seed.

    >>> abba(["a", "b"], [0, 1, 2])
    [('a', 0), ('b', 0), ('b', 1), ('a', 1), ('a', 2), ('b', 2)]
    """
    order = []
    for i, seed in enumerate(seeds):
        order += [(v, seed) for v in (variants if i % 2 == 0 else variants[::-1])]
    return order


def run_dir(work: str | Path, name: str, seed: int) -> Path:
    """Where the run of variant `name` at `seed` is kept."""
    return Path(work) / f"{name}-s{seed}"


def missing_runs(variants: list[str], seeds: list[int], work: str | Path) -> list[Path]:
    """The run folders, in ABBA order, that hold no finished main job (no `pipeline.json`)."""
    runs = [run_dir(work, name, seed) for name, seed in abba(variants, seeds)]
    return [r for r in runs if not (r / "pipeline.json").is_file()]


def run_main_jobs(
    variants: dict[str, list[str]], seeds: list[int], work: Path, target_ms: float = 1.0, extra: list[str] = ()
) -> pd.DataFrame:
    """Run (or reuse) `nas.pipeline` for every (variant, seed) in ABBA order; one row per run, from its
    `pipeline.json`: each step's wall time, the total, the test top-1 and what was found."""
    rows = []
    for name, seed in abba(list(variants), seeds):
        out = run_dir(work, name, seed)
        if not (out / "pipeline.json").is_file():
            cmd = [sys.executable, "-m", "nas.pipeline", "--target-ms", str(target_ms), "--out", str(out)]
            cmd += [*variants[name], f"train.seed={seed}", *extra]
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True)
            print(f"{name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
        rep = json.loads((out / "pipeline.json").read_text())
        rows.append(
            {
                "variant": name,
                "seed": seed,
                **{f"{k}_s": rep["wall_s"].get(k, float("nan")) for k in STEPS},
                "total_s": sum(rep["wall_s"].values()),
                "test_top1": rep["test_top1"],
                "precision": rep.get("precision"),
                "predicted_ms": rep["predicted_ms"],
                "params_M": rep["params_M"],
                "arch": ArchSpec.load(rep["arch"]).describe(),
                "cpu": LatencyTable.load(out / "lut" / "lut.csv").meta["device"],  # where the run measured its LUT
            }
        )
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, baseline: str, title: str) -> str:
    """One line per run, then each variant against `baseline`: the ratio of mean wall times per step and in total,
    the per-seed ratios of the totals, and the mean test top-1."""
    lines = [title, f"{'variant':<12}{'seed':>5}" + "".join(f"{k:>15}" for k in STEPS) + f"{'total s':>9}"]
    lines[-1] += f"{'top-1 %':>9}{'precision':>10}  arch"
    for r in df.itertuples():
        steps = "".join(f"{getattr(r, k + '_s'):>15.1f}" for k in STEPS)
        lines.append(
            f"{r.variant:<12}{r.seed:>5}{steps}{r.total_s:>9.1f}{r.test_top1 * 100:>9.2f}{r.precision!s:>10}  {r.arch}"
        )
    cols = [f"{k}_s" for k in STEPS] + ["total_s", "test_top1"]
    mean = df.groupby("variant")[cols].mean()
    base = mean.loc[baseline]
    by_seed = df.pivot(index="seed", columns="variant", values="total_s")
    for name in mean.index.drop(baseline):
        m = mean.loc[name]
        per_step = ", ".join(f"{k} {m[k + '_s'] / base[k + '_s']:.2f}x" for k in STEPS[:-1])
        seeds = ", ".join(f"{r[name] / r[baseline]:.2f}x" for _, r in by_seed.iterrows())
        lines.append(
            f"{name} / {baseline}, means over seeds: main job {m.total_s / base.total_s:.2f}x "
            f"({m.total_s:.0f} s against {base.total_s:.0f} s; per seed {seeds}); {per_step}; test top-1 "
            f"{m.test_top1 * 100:.2f} against {base.test_top1 * 100:.2f}% ({(m.test_top1 - base.test_top1) * 100:+.2f})"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--target-ms", type=float, default=1.0)
    p.add_argument("--work", default="runs/bench/main_job")
    p.add_argument("--out", default=str(RESULTS / "main_job"), help="prefix of the .csv/.txt written")
    p.add_argument("--report", action="store_true", help="only the report, from the kept runs (none is started)")
    p.add_argument(
        "--variants",
        nargs=2,
        default=["fp32-nchw", "defaults"],
        metavar=("BASELINE", "VARIANT"),
        choices=list(VARIANTS),
        help=f"the two override sets to compare, the baseline first (of {', '.join(VARIANTS)})",
    )
    p.add_argument("overrides", nargs="*", help="extra key=value for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    variants = {name: VARIANTS[name] for name in a.variants}
    if a.report:
        missing = missing_runs(list(variants), a.seeds, a.work)
        if missing:
            names = ", ".join(r.name for r in missing)
            raise SystemExit(f"error: --report needs the runs under {a.work}; missing: {names}")
    df = run_main_jobs(variants, a.seeds, Path(a.work), a.target_ms, a.overrides)
    title = f"The main job (nas.pipeline --target-ms {a.target_ms:g} {' '.join(a.overrides)}), one fresh run per row"
    title += f"; CPU: {', '.join(sorted(set(df['cpu'])))}"
    text = report(df, a.variants[0], title)
    prefix = Path(a.out)
    atomic_write_text(prefix.with_name(prefix.name + ".csv"), df.to_csv(index=False))
    atomic_write_text(prefix.with_name(prefix.name + ".txt"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
