"""Search quality at equal latency: does slimming find better architectures than cheap alternatives?

    python benchmarks/search_quality.py                       # quickstart supernet + torch LUT, targets 1.2 0.9
    python benchmarks/search_quality.py --targets 1.2 0.9 --seeds 0 1 2 --random 10

For every target T, all of these are trained with the identical recipe and budget (`--budget`, a shortened
tiny_cpu recipe on Fashion-MNIST) over every seed, and evaluated on the test split:
  (a) slimmed      the architecture nas.slim emits for T, trained from scratch;
  (b) inherited    the same, fine-tuned from the slimmer's inherited weights;
  (c) random       >= --random architectures sampled from the space with LUT latency in [0.9T, T]; the table
                   reports the best and the median architecture by mean test accuracy;
  (d) l1-scaled    L1's depth and width proportions, uniformly scaled down until the LUT says <= T.
Every architecture's fused model is also measured on the LUT's backend (interleaved rounds) for the plot.
Each training run is kept under runs/bench/search_quality/, so an interrupted benchmark resumes where it
stopped. The summary goes to benchmarks/results/search_quality.{csv,png,txt}.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_networks  # noqa: E402
from latency_lut.sampling import random_spec  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.search.loading import load_supernet  # noqa: E402
from nas.search.report import target_dirname  # noqa: E402
from nas.slim import SlimConfig  # noqa: E402
from nas.slim import run as slim  # noqa: E402
from nas.train import TrainModelConfig  # noqa: E402
from nas.train import run as train  # noqa: E402
from supernet.arch import ArchSpec, StageSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = ["data.train_limit=10000", "data.val_size=1000", "train.epochs=2", "train.warmup_epochs=0.2"]
L1_DEPTHS, L1_WIDTHS = (3, 2, 6, 4), (48, 96, 224, 448)


def l1_scaled(base: ArchSpec, table: LatencyTable, target: float, max_widths: list[int]) -> ArchSpec:
    """L1's proportions (depths 3-2-6-4, widths 48-96-224-448, one MB3D closing stage 4) scaled by one factor
    f for depth and width (widths rounded to 16, capped at the space's widths), largest f with LUT <= target."""
    for f in np.arange(1.0, 0.0, -0.01):
        depths = [max(1, round(d * f)) for d in L1_DEPTHS]
        widths = [min(mw, max(16, int(round(w * f / 16)) * 16)) for w, mw in zip(L1_WIDTHS, max_widths)]
        stages = [StageSpec(w, ("4d",) * d) for d, w in zip(depths, widths)]
        stages[3] = StageSpec(widths[3], ("4d",) * (depths[3] - 1) + ("3d",))
        spec = base.replace(stages=tuple(stages)).validate()
        if table.predict(spec) <= target:
            return spec
    raise RuntimeError(f"no L1-shaped network reaches {target} ms")


def sample_random(space, table: LatencyTable, target: float, n: int, seed: int) -> list[ArchSpec]:
    rng, out, tries = random.Random(seed), [], 0
    while len(out) < n:
        tries += 1
        if tries > 200000:
            raise RuntimeError(f"found only {len(out)} random archs in [0.9T, T] for T={target}")
        spec = random_spec(space, 10, rng)
        if 0.9 * target <= table.predict(spec) <= target and spec not in out:
            out.append(spec)
    return out


def train_one(arch: Path, out: Path, seed: int, init: str, data: str) -> float:
    if not (out / "metrics.json").is_file():
        cfg = compose(
            "train",
            [f"arch={arch}", f"out={out}", f"init={init}", f"train.seed={seed}", f"data={data}", *BUDGET],
            TrainModelConfig,
        )
        train(cfg)
    return json.loads((out / "metrics.json").read_text())["test_top1"]


def measure(specs: dict[str, ArchSpec], table: LatencyTable) -> dict[str, float]:
    """Each architecture's whole fused network, timed on the LUT's backend (the one network-measuring path)."""
    backend = make_backend(str(table.meta["backend"]), int(table.meta["threads"]))
    backend.setup()
    stats = measure_networks(
        list(specs.values()), backend, MeasureConfig(warmup=5, rounds=20), int(table.meta["batch"])
    )
    return {n: s["ms"] for n, s in zip(specs, stats)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", default="runs/pipeline/lut/lut.csv")
    p.add_argument("--targets", nargs="+", type=float, default=[1.2, 0.9])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--random", type=int, default=10)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--work", default="runs/bench/search_quality")
    return p.parse_args()


def slimmed_archs(a: argparse.Namespace, slim_dir: Path) -> None:
    """nas.slim's architectures for every target (kept from an earlier run of this benchmark)."""
    if all((slim_dir / target_dirname(t) / "arch.yaml").is_file() for t in a.targets):
        return
    over = [f"target_ms={a.targets}", f"supernet={a.supernet}", f"lut={a.lut}", f"out={slim_dir}", "overwrite=true"]
    slim(compose("slim", over, SlimConfig))


def contenders(a, t: float, slim_dir: Path, work: Path, net, table: LatencyTable) -> dict[str, tuple[Path, str]]:
    """name -> (arch YAML, init) at target `t`: (a) slimmed from scratch, (b) inherited, (c) random, (d) L1-scaled."""
    slimmed = slim_dir / target_dirname(t) / "arch.yaml"
    archs = {"slimmed": (slimmed, "scratch"), "inherited": (slimmed, "inherited")}
    arch_dir = work / f"T{t:g}" / "archs"
    for k, spec in enumerate(sample_random(net.space, table, t, a.random, seed=int(t * 1000))):
        spec.save(arch_dir / f"random{k}.yaml")
        archs[f"random{k}"] = (arch_dir / f"random{k}.yaml", "scratch")
    l1_scaled(net.spec, table, t, list(net.space.widths)).save(arch_dir / "l1_scaled.yaml")
    archs["l1-scaled"] = (arch_dir / "l1_scaled.yaml", "scratch")
    return archs


def main() -> None:
    a = parse_args()
    setup_logging(logging.WARNING)
    torch.set_num_threads(2)
    work, slim_dir = Path(a.work), Path(a.work) / "slim"
    table = LatencyTable.load(a.lut)
    net, _ = load_supernet(Path(a.supernet))
    slimmed_archs(a, slim_dir)
    rows, specs = [], {}
    for t in a.targets:
        for name, (path, init) in contenders(a, t, slim_dir, work, net, table).items():
            spec = specs[f"T{t:g}/{name}"] = ArchSpec.load(path)
            for seed in a.seeds:
                acc = train_one(path, work / f"T{t:g}" / name / f"seed{seed}", seed, init, a.data)
                row = {"target_ms": t, "arch": name, "seed": seed, "test_top1": acc}
                row.update(predicted_ms=table.predict(spec), depths=str(list(spec.depths)))
                rows.append({**row, "widths": str(list(spec.widths)), "mb3d": str(list(spec.num_3d))})
                print(f"T={t:g} {name:<10} seed {seed}: test top-1 {acc:.4f}", flush=True)
    measured = measure(specs, table)
    df = pd.DataFrame(rows)
    df["measured_ms"] = [measured[f"T{r.target_ms:g}/{r.arch}"] for r in df.itertuples()]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "search_quality.csv", df.to_csv(index=False))
    text = summarize(df, a)
    atomic_write_text(RESULTS / "search_quality.txt", text)
    print(text)
    plot(df, RESULTS / "search_quality.png")


def summarize(df: pd.DataFrame, a) -> str:
    lines = [
        f"Fashion-MNIST test top-1 (%), mean ± std over seeds {a.seeds}; budget {' '.join(BUDGET)}",
        f"{'T (ms)':>7}  {'method':<22}{'top-1 %':>15}{'pred ms':>9}{'meas ms':>9}  arch",
    ]
    for t, g in df.groupby("target_ms", sort=False):
        per_arch = g.groupby("arch")["test_top1"].agg(["mean", "std"])
        randoms = per_arch[per_arch.index.str.startswith("random")].sort_values("mean")
        picks = [
            ("(a) slimmed, scratch", "slimmed"),
            ("(b) slimmed, inherited", "inherited"),
            (f"(c) best of {len(randoms)} random", randoms.index[-1]),
            (f"(c) median of {len(randoms)} random", randoms.index[(len(randoms) - 1) // 2]),
            ("(d) L1-scaled", "l1-scaled"),
        ]
        for label, name in picks:
            r = g[g["arch"] == name].iloc[0]
            m, s = per_arch.loc[name, "mean"] * 100, per_arch.loc[name, "std"] * 100
            lines.append(
                f"{t:>7g}  {label:<22}{f'{m:.2f} ± {s:.2f}':>15}{r.predicted_ms:>9.3f}{r.measured_ms:>9.3f}"
                f"  {name}: depths {r.depths} widths {r.widths} MB3D {r.mb3d}"
            )
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.6))
    agg = (
        df.groupby(["target_ms", "arch"])
        .agg(acc=("test_top1", "mean"), sd=("test_top1", "std"), ms=("measured_ms", "first"))
        .reset_index()
    )
    styles = {
        "slimmed": ("C3", "*", 14, "(a) slimmed, scratch"),
        "inherited": ("C1", "P", 10, "(b) inherited"),
        "l1-scaled": ("C2", "s", 8, "(d) L1-scaled"),
    }
    rnd = agg[agg["arch"].str.startswith("random")]
    ax.errorbar(
        rnd["ms"], rnd["acc"] * 100, yerr=rnd["sd"] * 100, fmt="o", color="grey", alpha=0.6, ms=4, label="(c) random"
    )
    for key, (c, m, size, label) in styles.items():
        sub = agg[agg["arch"] == key]
        ax.errorbar(sub["ms"], sub["acc"] * 100, yerr=sub["sd"] * 100, fmt=m, color=c, ms=size, label=label)
    for t in df["target_ms"].unique():
        ax.axvline(t, color="k", ls=":", lw=1)
    ax.set(
        xlabel="measured latency (ms, torch CPU, 1 thread, batch 1)",
        ylabel="test top-1 (%)",
        title="Search quality at equal latency (Fashion-MNIST, tiny space)",
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
