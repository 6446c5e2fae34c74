"""Search cost: slimming against an evolutionary search given 5x and 20x the evaluations.

    python benchmarks/search_cost.py                          # quickstart supernet + torch LUT, targets 1.2 0.9
    python benchmarks/search_cost.py --targets 1.2 0.9 --multipliers 5 20

Both searches use the same LUT latency and the same supernet-accuracy evaluator as nas.slim (sliced
sub-network, BN re-estimated on 4 cached training batches, 2000 held-out validation images). For each target,
the slimmer's evaluation count is the number it had used when it first reached the target; the evolutionary
search (nas/search/evolution.py: population 16, top 25% as parents, half mutation / half crossover) then gets
5x and 20x that many evaluations, with a fresh evaluation cache so that its wall time is its own.
The table reports evaluations, wall time and the best supernet-estimated validation accuracy found.
Written to benchmarks/results/search_cost.{csv,txt}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.measure import width_options  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.search.evaluator import SubnetEvaluator, cached_batches  # noqa: E402
from nas.search.evolution import Evolution, EvolutionConfig  # noqa: E402
from nas.search.loading import load_supernet, supernet_data_config  # noqa: E402
from nas.search.slimmer import Slimmer  # noqa: E402
from nas.search.state import SlimState, Step, first_at_or_below  # noqa: E402
from nas.slim import SlimConfig  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", default="runs/pipeline/lut/lut.csv")
    p.add_argument("--targets", nargs="+", type=float, default=[1.2, 0.9])
    p.add_argument("--multipliers", nargs="+", type=int, default=[5, 20])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def result(target: float, method: str, evaluations: int, wall_s: float, acc: float, ms: float, arch: str) -> dict:
    row = {"target_ms": target, "method": method, "evaluations": evaluations, "wall_s": round(wall_s, 1)}
    row.update(val_acc=acc, predicted_ms=ms, arch=arch)
    print(row, flush=True)
    return row


def slimming_trajectory(net, latency, evaluator, target: float) -> tuple[list[Step], dict[int, float]]:
    """One trajectory to the smallest target, with the wall time at every step."""
    stamps: dict[int, float] = {}
    t0 = time.time()
    on_step = lambda s: stamps.__setitem__(s.step, time.time() - t0)  # noqa: E731
    slimmer = Slimmer(latency, evaluator, net.importance()[0], on_step=on_step)
    return slimmer.run(SlimState(net.derive(), tuple(net.space.widths)), target), stamps


def evolution_result(net, latency, evaluator, target: float, budget: int, multiplier: int, seed: int) -> dict:
    widths = [width_options(w) for w in net.space.widths]
    evo = Evolution(latency, evaluator, net.stage_choices, net.space.depths, widths, EvolutionConfig(seed=seed))
    t1 = time.time()
    best, acc = evo.run(target, budget)
    return result(
        target, f"evolution {multiplier}x", len(evo.scores), time.time() - t1, acc, latency(best), best.describe()
    )


def write_report(df: pd.DataFrame, header: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "search_cost.csv", df.to_csv(index=False))
    lines = [header, f"{'T (ms)':>7}  {'method':<15}{'evals':>6}{'wall s':>8}{'val acc %':>10}{'pred ms':>9}  arch"]
    for r in df.itertuples():
        lines.append(
            f"{r.target_ms:>7g}  {r.method:<15}{r.evaluations:>6}{r.wall_s:>8.1f}{r.val_acc * 100:>10.2f}"
            f"{r.predicted_ms:>9.3f}  {r.arch}"
        )
    text = "\n".join(lines)
    atomic_write_text(RESULTS / "search_cost.txt", text)
    print(text)


def main() -> None:
    a = parse_args()
    setup_logging(logging.WARNING)
    cfg = compose("slim", [], SlimConfig)  # the slimmer's own defaults: val_images, bn_batches, threads
    torch.set_num_threads(cfg.threads)
    net, ckpt = load_supernet(Path(a.supernet))
    table = LatencyTable.load(a.lut)
    val, bn = cached_batches(supernet_data_config(ckpt), cfg.val_images, cfg.bn_batches, cfg.batch_size, cfg.seed)
    evaluator = SubnetEvaluator(net, val, bn)

    def latency(s: SlimState) -> float:
        return table.predict(net.spec_of(s.choices, s.widths))

    traj, stamps = slimming_trajectory(net, latency, evaluator, min(a.targets))
    rows = []
    for t in a.targets:
        st = first_at_or_below(traj, t)
        rows.append(
            result(t, "slimming", st.evaluations, stamps[st.step], st.val_acc, st.latency_ms, st.state.describe())
        )
        for m in a.multipliers:
            fresh = SubnetEvaluator(net, val, bn)
            rows.append(evolution_result(net, latency, fresh, t, m * st.evaluations, m, a.seed))
    write_report(pd.DataFrame(rows), f"supernet-estimated val accuracy ({cfg.val_images} held-out images), LUT {a.lut}")


if __name__ == "__main__":
    main()
