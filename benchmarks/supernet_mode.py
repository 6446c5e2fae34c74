"""Hard (straight-through, one branch per MetaPath per step) against soft (every branch, mixed) supernet
training: what each costs in the README's main job, and what each finds (issue #23).

    python benchmarks/supernet_mode.py                    # both stages, seeds 0 and 1 (about 2 h on 2 cores)
    python benchmarks/supernet_mode.py --stage pipelines  # stage 1 only; --stage quality reuses its runs
    python benchmarks/supernet_mode.py --stage report     # the report again from the CSVs (..._report.txt)

1. Pipelines. `python -m nas.pipeline --target-ms 1.0` (the README's main job, on its default data) with
   `supernet.hard=false` and `supernet.hard=true`, for each seed (`train.seed=`, which seeds the supernet's and
   the found model's training), one fresh process each, in the order soft, hard, hard, soft, ... so that a slow
   period of the shared host does not fall on one mode only. Each run's `pipeline.json` gives every step's wall
   time and the found model's test top-1. Runs are kept under --work; a complete run is not repeated (delete it
   to measure again).
2. Search quality, on one LUT (the first soft run's, so that every supernet searches the same latencies):
   - each supernet's default slimmer (one trajectory emitting every --targets, as `nas.slim` does; selection on
     --val-images held-out images, BN re-estimated on --bn-batches training batches);
   - a fixed set of architectures: every supernet's winners plus --extra uniform random states per target in
     [0.6T, T]. Every supernet re-scores every one of them on disjoint held-out images;
   - each architecture trained from scratch (benchmarks/search_quality.py's recipe and run cache), --seeds;
   - per supernet: the from-scratch top-1 of its winners (mean ± SD over seeds), and the Kendall tau between its
     re-scored estimate (-loss and top-1) and from-scratch top-1 over the same architectures.
Written to benchmarks/results/supernet_mode.{csv,txt} (another prefix: --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import main_job  # noqa: E402
import search_cost  # noqa: E402
import search_quality  # noqa: E402
from main_job import STEPS, abba, run_main_jobs  # noqa: E402

from nas.config import setup_logging  # noqa: E402
from nas.search.evolution import EvolutionConfig  # noqa: E402
from nas.search.state import first_at_or_below  # noqa: E402
from nas.search.targets import emitted  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"soft": "false", "hard": "true"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("all", "pipelines", "quality", "report"), default="all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="supernet seeds per mode")
    p.add_argument("--target-ms", type=float, default=1.0, help="the main job's target")
    p.add_argument("--targets", nargs="+", type=float, default=[1.6, 1.2, 0.9], help="search-quality targets")
    p.add_argument("--scratch-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--extra", type=int, default=2, help="random architectures per target for the rank test")
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--bn-batches", type=int, default=2)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--work", default="runs/bench/supernet_mode")
    p.add_argument("--out", default=str(RESULTS / "supernet_mode"), help="prefix of the .csv/.txt written")
    p.add_argument("overrides", nargs="*", help="extra key=value for every pipeline (e.g. a smaller budget)")
    return p.parse_args(argv)


def runs(a: argparse.Namespace) -> list[tuple[str, int]]:
    """(mode, seed) in ABBA order: soft, hard for the first seed, hard, soft for the next, ..."""
    return abba(list(MODES), a.seeds)


def run_dir(a: argparse.Namespace, mode: str, seed: int) -> Path:
    return main_job.run_dir(a.work, mode, seed)


def pipelines(a: argparse.Namespace) -> pd.DataFrame:
    variants = {mode: [f"supernet.hard={hard}"] for mode, hard in MODES.items()}
    df = run_main_jobs(variants, a.seeds, Path(a.work), a.target_ms, a.overrides)
    return df.rename(columns={"variant": "mode"}).drop(columns=["precision"])


def quality(a: argparse.Namespace) -> pd.DataFrame:
    """Per supernet and architecture: the re-scored estimate, whether it is that supernet's winner (and for which
    target), and the from-scratch top-1 per seed."""
    lut = run_dir(a, *runs(a)[0]) / "lut" / "lut.csv"
    setups, winners = {}, []
    for mode, seed in runs(a):
        sn = run_dir(a, mode, seed) / "supernet" / "supernet.pt"
        ns = argparse.Namespace(
            supernet=str(sn), lut=str(lut), val_images=a.val_images, bn_batches=a.bn_batches, seed=0
        )
        su = setups[(mode, seed)] = search_cost.Setup(ns)
        t0 = time.time()
        slimmer = su.stack.slimmer(su.evaluator(), "default")
        traj = slimmer.run(su.start, sorted(a.targets, reverse=True))
        for t in a.targets:
            e = emitted(t, traj, slimmer.refill(first_at_or_below(traj, t), t, su.start), None)
            winners.append({"mode": mode, "seed": seed, "target_ms": t, "state": e.step.state})
        print(
            f"{mode} seed {seed}: searched in {time.time() - t0:.0f} s, {slimmer.evaluations} evaluations", flush=True
        )
    first = next(iter(setups.values()))
    evo = first.stack.evolution(first.rescore, EvolutionConfig(seed=7))
    for t in a.targets:
        evo.random_search(t, a.extra, low_fraction=0.6)
    states = list(dict.fromkeys([w["state"] for w in winners] + list(evo.scores)))
    specs = {s: json.dumps(first.net.spec_of(s.choices, s.widths).to_dict()) for s in states}
    scratch = train_scratch(a, sorted(set(specs.values())))
    rows = []
    for (mode, seed), su in setups.items():
        for s in states:
            re = su.rescore(s)
            won = [w["target_ms"] for w in winners if (w["mode"], w["seed"], w["state"]) == (mode, seed, s)]
            for k, acc in scratch[specs[s]].items():
                rows.append(
                    {
                        "mode": mode,
                        "seed": seed,
                        "arch": s.describe(),
                        "predicted_ms": su.latency(s),
                        "winner_for": ",".join(f"{t:g}" for t in won),
                        "rescore_loss": re.loss,
                        "rescore_top1": re.top1,
                        "scratch_seed": k,
                        "scratch_top1": acc,
                        "arch_id": search_quality.arch_name(specs[s]),
                    }
                )
    return pd.DataFrame(rows)


def train_scratch(a: argparse.Namespace, spec_jsons: list[str]) -> dict[str, dict[int, float]]:
    work, out = Path(a.work) / "scratch", {}
    t0 = time.time()
    for i, spec_json in enumerate(spec_jsons):
        out[spec_json] = {k: search_quality.train_arch(spec_json, work, k, a.data)[0] for k in a.scratch_seeds}
        print(f"from scratch {i + 1}/{len(spec_jsons)} ({time.time() - t0:.0f} s)", flush=True)
    return out


def report(pipe: pd.DataFrame, q: pd.DataFrame | None, a: argparse.Namespace) -> str:
    lines = [f"1. The main job (nas.pipeline --target-ms {a.target_ms:g} {' '.join(a.overrides)}), one run per row"]
    lines.append(f"{'mode':<5}{'seed':>5}" + "".join(f"{k:>15}" for k in STEPS) + f"{'total s':>9}{'top-1 %':>9}  arch")
    for r in pipe.itertuples():
        steps = "".join(f"{getattr(r, k + '_s'):>15.1f}" for k in STEPS)
        lines.append(f"{r.mode:<5}{r.seed:>5}{steps}{r.total_s:>9.1f}{r.test_top1 * 100:>9.2f}  {r.arch}")
    m = pipe.groupby("mode")[["total_s", "train_supernet_s", "test_top1"]].mean()
    if {"soft", "hard"} <= set(m.index):
        h, s = m.loc["hard"], m.loc["soft"]
        lines.append(
            f"hard / soft, mean over seeds: main job {h.total_s / s.total_s:.2f}x, supernet step "
            f"{h.train_supernet_s / s.train_supernet_s:.2f}x; test top-1 {h.test_top1 * 100:.2f} vs "
            f"{s.test_top1 * 100:.2f}% ({(h.test_top1 - s.test_top1) * 100:+.2f} points)"
        )
    if q is None:
        return "\n".join(lines)
    n_arch = q["arch_id"].nunique()
    lines += ["", f"2. Search quality on one LUT; from-scratch top-1 (%) over seeds {a.scratch_seeds} "]
    lines[-1] += f"({' '.join(search_quality.BUDGET)}); Kendall tau over the same {n_arch} architectures"
    head = "".join(f"{f'T={t:g}':>16}" for t in a.targets)
    lines.append(f"{'mode':<5}{'seed':>5}{head}{'tau(-loss)':>12}{'tau(top1)':>11}")
    per_arch = q.groupby(["mode", "seed", "arch_id"]).agg(
        scratch=("scratch_top1", "mean"), loss=("rescore_loss", "first"), top1=("rescore_top1", "first")
    )
    summary = []
    for (mode, seed), g in per_arch.groupby(level=[0, 1]):
        tau_loss = search_quality.kendall_tau(-g["loss"], g["scratch"])
        tau_top1 = search_quality.kendall_tau(g["top1"], g["scratch"])
        cells = []
        for t in a.targets:
            w = q[(q["mode"] == mode) & (q["seed"] == seed)]
            w = w[w["winner_for"].apply(lambda x, t=t: f"{t:g}" in x.split(","))]
            cells.append(f"{w['scratch_top1'].mean() * 100:.2f} ± {w['scratch_top1'].std() * 100:.2f}")
            var = w["scratch_top1"].var() / len(w)  # the squared SE of this winner's mean over training seeds
            summary.append({"mode": mode, "seed": seed, "target": t, "acc": w["scratch_top1"].mean(), "var": var})
        lines.append(f"{mode:<5}{seed:>5}" + "".join(f"{c:>16}" for c in cells) + f"{tau_loss:>12.3f}{tau_top1:>11.3f}")
    # A mode's figure: the mean over its supernets of their winners' mean top-1. Its SE is the training seeds' SE of
    # one winner's mean (averaged in variance over the supernets), not divided by the number of supernets: two
    # supernets that find the same architecture share its three runs, so they are not independent draws.
    s = pd.DataFrame(summary).groupby(["mode", "target"]).agg(mean=("acc", "mean"), var=("var", "mean"))
    for t in a.targets:
        if ("hard", t) in s.index and ("soft", t) in s.index:
            h, o = s.loc[("hard", t)], s.loc[("soft", t)]
            se = np.sqrt(h["var"] + o["var"])
            lines.append(
                f"T={t:g}: hard - soft winners, mean over supernet seeds: {(h['mean'] - o['mean']) * 100:+.2f} "
                f"± {se * 100:.2f} points (SE of the difference over training seeds)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    setup_logging(logging.WARNING)
    prefix = Path(a.out)
    if a.stage == "report":  # the report again from the CSVs a full run wrote
        pipe = pd.read_csv(prefix.with_name(prefix.name + "_pipelines.csv"))
        q = pd.read_csv(prefix.with_suffix(".csv"), keep_default_na=False, dtype={"winner_for": str})
        text = report(pipe, q, a)
        atomic_write_text(prefix.with_name(prefix.name + "_report.txt"), text + "\n")
        print(text)
        return
    t0 = time.time()
    pipe = pipelines(a) if a.stage != "quality" else pipelines_done(a)
    q = quality(a) if a.stage != "pipelines" else None
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_name(prefix.name + "_pipelines.csv"), pipe.to_csv(index=False))
    if q is not None:
        atomic_write_text(prefix.with_suffix(".csv"), q.to_csv(index=False))
    text = report(pipe, q, a) + f"\nbenchmark wall time: {time.time() - t0:.0f} s"
    atomic_write_text(prefix.with_suffix(".txt"), text + "\n")
    print(text)


def pipelines_done(a: argparse.Namespace) -> pd.DataFrame:
    missing = main_job.missing_runs(list(MODES), a.seeds, a.work)
    if missing:
        raise SystemExit(f"error: --stage quality needs the pipeline runs; missing: {', '.join(map(str, missing))}")
    return pipelines(a)


if __name__ == "__main__":
    main()
