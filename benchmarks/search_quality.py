"""Search quality trained from scratch: do the searches' winners hold up when trained, and does the supernet's
estimate rank architectures as training does?

    python benchmarks/search_quality.py                       # the whole benchmark: searches, timing, training
    python benchmarks/search_quality.py --targets 1.6 1.2 0.9 --seeds 0 1 2 --extra 4
    python benchmarks/search_quality.py --seed 1 --out benchmarks/results/search_quality_seed1   # another draw

1. The search stage (benchmarks/search_cost.py): per target, the default slimmer, the paper's slimmer, evolution
   and random search at equal evaluations, evolution at 5x, each winner re-scored on disjoint images.
2. `--extra` more architectures per target (uniform random states with predicted latency in [0.6T, T]), so that
   the proxy's rank fidelity is measured over at least 20 architectures spanning the targets.
3. Every architecture's fused network is timed on the LUT's backend (interleaved rounds).
4. Every architecture is trained from scratch with one recipe (`BUDGET`, a shortened tiny_cpu recipe on
   Fashion-MNIST) for every seed and evaluated on the test split. Runs are kept under --work, so an interrupted
   benchmark resumes.
5. The report: per target and method, from-scratch test top-1 (mean and SD over seeds), the margins of the default
   search over each other method with the standard error of the difference, the Kendall tau between the re-scored
   supernet estimate and from-scratch accuracy, and one plot of from-scratch accuracy against measured latency.
Written to benchmarks/results/search_quality.{csv,txt,png} (another prefix: --out); the budget of each stage is
printed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_cost  # noqa: E402

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_networks  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.search.evolution import EvolutionConfig  # noqa: E402
from nas.train import TrainModelConfig  # noqa: E402
from nas.train import run as train  # noqa: E402
from supernet.arch import ArchSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = ["data.train_limit=10000", "data.val_size=1000", "train.epochs=2", "train.warmup_epochs=0.2"]
STYLES = {  # method -> colour, marker, size
    "default": ("C3", "*", 13),
    "paper": ("C0", "D", 7),
    "evolution": ("C2", "s", 7),
    "evolution 5x": ("C1", "^", 8),
    "random": ("C4", "o", 6),
    "extra": ("grey", ".", 7),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", default="runs/pipeline/lut/lut.csv")
    p.add_argument("--targets", nargs="+", type=float, default=[1.6, 1.2, 0.9])
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--bn-batches", type=int, default=2)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--extra", type=int, default=3, help="extra random architectures per target for the rank test")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--work", default="runs/bench/search_quality")
    p.add_argument("--search-csv", help="reuse a search stage's CSV instead of running it")
    p.add_argument("--seed", type=int, default=0, help="the search stage's draw (search_cost.py --seed)")
    p.add_argument("--out", default=str(RESULTS / "search_quality"), help="prefix of the .csv/.txt/.png written")
    return p.parse_args()


def search_stage(a: argparse.Namespace) -> pd.DataFrame:
    if a.search_csv:
        return pd.read_csv(a.search_csv)
    argv = ["--supernet", a.supernet, "--lut", a.lut, "--val-images", str(a.val_images)]
    argv += ["--bn-batches", str(a.bn_batches), "--seed", str(a.seed), "--targets"]
    if a.seed:  # another draw keeps its own file (search_cost.py writes results/search_cost by default)
        argv = ["--out", str(RESULTS / f"search_cost_seed{a.seed}"), *argv]
    return search_cost.main(argv + [str(t) for t in a.targets])


def extra_archs(a: argparse.Namespace, su: search_cost.Setup) -> pd.DataFrame:
    """`--extra` random states per target in [0.6T, T], re-scored like the winners (the rank test's spread)."""
    rows = []
    for t in a.targets:
        evo = su.stack.evolution(su.rescore, EvolutionConfig(seed=7))
        evo.random_search(t, a.extra, low_fraction=0.6)  # re-scored as they are sampled
        for s, re in evo.scores.items():
            spec = su.net.spec_of(s.choices, s.widths)
            rows.append(
                {
                    "target_ms": t,
                    "method": "extra",
                    "evaluations": 0,
                    "predicted_ms": su.latency(s),
                    "rescore_loss": re.loss,
                    "rescore_top1": re.top1,
                    "arch": s.describe(),
                    "spec": json.dumps(spec.to_dict()),
                }
            )
    return pd.DataFrame(rows)


def measure(df: pd.DataFrame, su: search_cost.Setup) -> list[float]:
    """Each unique architecture's fused network on the LUT's backend, in interleaved rounds."""
    table = su.table
    backend = make_backend(str(table.meta["backend"]), int(table.meta["threads"]))
    backend.setup()
    specs = [ArchSpec.from_dict(json.loads(s)) for s in df["spec"]]
    stats = measure_networks(specs, backend, MeasureConfig(), int(table.meta["batch"]))
    return [s["ms"] for s in stats]


def arch_name(spec_json: str) -> str:
    """A run folder named by the architecture's content, so a run is reused only for the same architecture."""
    spec = ArchSpec.from_dict(json.loads(spec_json))
    return "arch-" + hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def train_one(arch: Path, out: Path, seed: int, data: str, recipe: list[str] = BUDGET) -> tuple[float, float]:
    """Test top-1 and training wall time of one from-scratch run, reused from `out` when it is there and was
    trained with the same data and recipe (its config.yaml); otherwise (re)trained, replacing it."""
    over = [f"arch={arch}", f"out={out}", "init=scratch", f"train.seed={seed}", f"data={data}", *recipe]
    cfg = compose("train", over, TrainModelConfig)
    cfg.data.input_size = ArchSpec.load(arch).input_size  # as nas.train does: the arch's input size wins
    if not (out / "metrics.json").is_file() or not same_recipe(out / "config.yaml", cfg):
        train(cfg)
    m = json.loads((out / "metrics.json").read_text())
    return m["test_top1"], m["train_wall_s"]


def train_arch(
    spec_json: str, work: Path, seed: int, data: str, recipe: list[str] = BUDGET
) -> tuple[float, float, str]:
    """`train_one` for an architecture given as its spec's JSON: its YAML kept as work/archs/<name>.yaml and its runs
    under work/<name>/seed<k>, <name> its content hash (`arch_name`), so a run is reused only for the same
    architecture. Returns test top-1, training wall time and <name>."""
    name = arch_name(spec_json)
    path = work / "archs" / f"{name}.yaml"
    if not path.is_file():
        ArchSpec.from_dict(json.loads(spec_json)).save(path)
    return (*train_one(path, work / name / f"seed{seed}", seed, data, recipe), name)


def same_recipe(stored: Path, cfg: TrainModelConfig) -> bool:
    """Whether the run whose config is `stored` used `cfg`'s data and training recipe (its intra-op thread count
    aside: that changes the speed and the order of float sums, not the recipe)."""
    if not stored.is_file():
        return False
    old = yaml.safe_load(stored.read_text())
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k != "threads"}
    old_train = {k: v for k, v in (old.get("train") or {}).items() if k != "threads"}
    return old.get("data") == dataclasses.asdict(cfg.data) and old_train == train


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in either variable handled)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    return float((dx * dy).sum() / math.sqrt((dx != 0).sum() * (dy != 0).sum()))


def margins(per: pd.DataFrame, t: float, n_seeds: int) -> list[str]:
    out = []
    d = per.loc[(t, "default")]
    for m in ["paper", "evolution", "random", "evolution 5x"]:
        o = per.loc[(t, m)]
        se = math.sqrt((d["sd"] ** 2 + o["sd"] ** 2) / n_seeds)
        out.append(f"default - {m}: {(d['mean'] - o['mean']) * 100:+.2f} ± {se * 100:.2f}")
    return out


def summarize(df: pd.DataFrame, a: argparse.Namespace, budget: dict[str, float]) -> str:
    per = df.groupby(["target_ms", "method"]).agg(
        mean=("test_top1", "mean"),
        sd=("test_top1", "std"),
        ms=("measured_ms", "first"),
        pred=("predicted_ms", "first"),
        re=("rescore_top1", "first"),
        evals=("evaluations", "first"),
        arch=("arch", "first"),
    )
    lines = [
        f"From-scratch Fashion-MNIST test top-1 (%), mean ± SD over seeds {a.seeds}; recipe {' '.join(BUDGET)}",
        f"{'T (ms)':>7}  {'method':<13}{'evals':>6}{'top-1 %':>15}{'re-scored':>10}{'pred ms':>9}{'meas ms':>9}  arch",
    ]
    for t in sorted(a.targets, reverse=True):
        for m in search_cost.METHOD_ORDER:
            r = per.loc[(t, m)]
            acc = f"{r['mean'] * 100:.2f} ± {r['sd'] * 100:.2f}"
            lines.append(
                f"{t:>7g}  {m:<13}{r['evals']:>6}{acc:>15}"
                f"{r['re'] * 100:>9.2f}%{r['pred']:>9.3f}{r['ms']:>9.3f}  {r['arch']}"
            )
        lines.append(f"{'':>9}margins (points, ± SE of the difference): " + "; ".join(margins(per, t, len(a.seeds))))
    arch = df.groupby("spec").agg(
        scratch=("test_top1", "mean"),
        re_top1=("rescore_top1", "first"),
        re_loss=("rescore_loss", "first"),
        arch=("arch", "first"),
        ms=("measured_ms", "first"),
    )
    tau_top1 = kendall_tau(arch["re_top1"], arch["scratch"])
    tau_loss = kendall_tau(-arch["re_loss"], arch["scratch"])
    lines.append(
        f"proxy fidelity over {len(arch)} distinct architectures ({arch['ms'].min():.2f}-{arch['ms'].max():.2f} ms "
        f"measured): Kendall tau (re-scored supernet top-1 vs from-scratch top-1) = {tau_top1:.3f}; "
        f"(re-scored supernet -loss vs from-scratch top-1) = {tau_loss:.3f}"
    )
    lines.append("budget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget.items()))
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path, targets: list[float], backend: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.plots import save_figure

    agg = (
        df.groupby(["target_ms", "method", "spec"])
        .agg(acc=("test_top1", "mean"), sd=("test_top1", "std"), ms=("measured_ms", "first"))
        .reset_index()
    )
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m, (c, mk, size) in STYLES.items():
        sub = agg[agg["method"] == m]
        ax.errorbar(
            sub["ms"],
            sub["acc"] * 100,
            yerr=sub["sd"] * 100,
            fmt=mk,
            color=c,
            ms=size,
            capsize=2,
            label=m if m != "extra" else "random extras (rank test)",
        )
    for t in targets:
        ax.axvline(t, color="k", ls=":", lw=1)
    ax.set(
        xlabel=f"measured latency (ms, {backend}, 1 thread, batch 1)",
        ylabel="from-scratch test top-1 (%)",
        title="Search winners at equal evaluations, trained from scratch (tiny space, Fashion-MNIST)",
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    a = parse_args()
    setup_logging(logging.WARNING)
    budget, t0 = {}, time.time()
    found = search_stage(a)
    budget["searches"] = time.time() - t0
    setup = dict(supernet=a.supernet, lut=a.lut, val_images=a.val_images, bn_batches=a.bn_batches, seed=a.seed)
    su = search_cost.Setup(argparse.Namespace(**setup))
    found = found[found["method"].isin(search_cost.METHOD_ORDER)]  # search_cost's variants are not trained
    df = pd.concat([found, extra_archs(a, su)], ignore_index=True)
    t1 = time.time()
    unique = df.drop_duplicates("spec").reset_index(drop=True)
    ms = dict(zip(unique["spec"], measure(unique, su)))
    df["measured_ms"] = df["spec"].map(ms)
    budget["timing"] = time.time() - t1
    t2, work, rows = time.time(), Path(a.work), []
    for r in df.to_dict("records"):
        for seed in a.seeds:  # runs already in --work are reused by content
            acc, wall, name = train_arch(r["spec"], work, seed, a.data)
            rows.append({**r, "seed": seed, "test_top1": acc, "train_wall_s": wall, "arch_id": name})
        print(
            f"T={r['target_ms']:g} {r['method']:<13} {name}: "
            f"{np.mean([x['test_top1'] for x in rows[-len(a.seeds) :]]) * 100:.2f}%",
            flush=True,
        )
    budget["training"] = time.time() - t2
    budget["total"] = time.time() - t0
    out = pd.DataFrame(rows)
    # what training costs from scratch, whether or not runs were reused from --work: each distinct run's own time
    budget["training, every run's own time"] = out.drop_duplicates(["arch_id", "seed"])["train_wall_s"].sum()
    prefix = Path(a.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_suffix(".csv"), out.drop(columns=["spec"]).to_csv(index=False))
    text = summarize(out, a, budget)
    atomic_write_text(prefix.with_suffix(".txt"), text)
    print(text)
    plot(out, prefix.with_suffix(".png"), a.targets, str(su.table.meta["backend"]))


if __name__ == "__main__":
    main()
