"""Search cost: slimming against an evolutionary search given 5x and 20x the evaluations.

    python benchmarks/search_cost.py                          # quickstart supernet + torch LUT, targets 1.2 0.9
    python benchmarks/search_cost.py --targets 1.2 0.9 --multipliers 5 20

Both searches use the same LUT latency and the same supernet-accuracy evaluator as nas.slim (sliced
sub-network, BN re-estimated on 4 cached training batches, 2000 held-out validation images). For each target,
the slimmer's evaluation count is the number it had used when it first reached the target; the evolutionary
search (nas/evolution.py: population 16, top 25% as parents, half mutation / half crossover) then gets
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
from nas.arch import atomic_write_text  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.data import DataConfig  # noqa: E402
from nas.evolution import Evolution, EvolutionConfig  # noqa: E402
from nas.slim import SlimConfig, SubnetEvaluator, cached_batches, load_supernet  # noqa: E402
from nas.slimming import Slimmer, SlimState, Step, first_at_or_below  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", default="runs/pipeline/lut/lut.csv")
    p.add_argument("--targets", nargs="+", type=float, default=[1.2, 0.9])
    p.add_argument("--multipliers", nargs="+", type=int, default=[5, 20])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    setup_logging(logging.WARNING)
    cfg = compose("slim", [], SlimConfig)  # the slimmer's own defaults: val_images, bn_batches, threads
    torch.set_num_threads(cfg.threads)
    net, ckpt = load_supernet(Path(a.supernet))
    table = LatencyTable.load(a.lut)
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), ckpt["meta"]["config"]["data"]))
    val, bn = cached_batches(data_cfg, cfg)

    def latency(s: SlimState) -> float:
        return table.predict(net.spec_of(s.choices, s.widths))

    # slimming: one trajectory to the smallest target, recording the wall time at every step
    stamps: dict[int, float] = {}
    t0 = time.time()
    slimmer = Slimmer(
        latency,
        SubnetEvaluator(net, val, bn),
        net.importance()[0],
        on_step=lambda s: stamps.__setitem__(s.step, time.time() - t0),
    )
    traj: list[Step] = slimmer.run(SlimState(net.derive(), tuple(net.space.widths)), min(a.targets))
    rows = []
    for t in a.targets:
        st = first_at_or_below(traj, t)
        rows.append(
            {
                "target_ms": t,
                "method": "slimming",
                "evaluations": st.evaluations,
                "wall_s": round(stamps[st.step], 1),
                "val_acc": st.val_acc,
                "predicted_ms": st.latency_ms,
                "arch": st.state.describe(),
            }
        )
        print(rows[-1], flush=True)
        for m in a.multipliers:
            budget = m * st.evaluations
            evo = Evolution(
                latency,
                SubnetEvaluator(net, val, bn),
                net.stage_choices,
                net.space.depths,
                [width_options(w) for w in net.space.widths],
                EvolutionConfig(seed=a.seed),
            )
            t1 = time.time()
            best, acc = evo.run(t, budget)
            rows.append(
                {
                    "target_ms": t,
                    "method": f"evolution {m}x",
                    "evaluations": len(evo.scores),
                    "wall_s": round(time.time() - t1, 1),
                    "val_acc": acc,
                    "predicted_ms": latency(best),
                    "arch": best.describe(),
                }
            )
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "search_cost.csv", df.to_csv(index=False))
    lines = [
        f"supernet-estimated val accuracy ({cfg.val_images} held-out images), LUT {a.lut}",
        f"{'T (ms)':>7}  {'method':<15}{'evals':>6}{'wall s':>8}{'val acc %':>10}{'pred ms':>9}  arch",
    ]
    for r in df.itertuples():
        lines.append(
            f"{r.target_ms:>7g}  {r.method:<15}{r.evaluations:>6}{r.wall_s:>8.1f}{r.val_acc * 100:>10.2f}"
            f"{r.predicted_ms:>9.3f}  {r.arch}"
        )
    text = "\n".join(lines)
    atomic_write_text(RESULTS / "search_cost.txt", text)
    print(text)


if __name__ == "__main__":
    main()
