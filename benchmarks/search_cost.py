"""Search at equal cost, re-scored on images the searches never saw: the default slimmer, the paper's slimmer,
evolution and plain random search, each with the same number of supernet evaluations (evolution also at 5x).

    python benchmarks/search_cost.py                          # quickstart supernet + torch LUT, targets 1.6 1.2 0.9
    python benchmarks/search_cost.py --targets 1.6 1.2 0.9 --val-images 1000

Every search uses the LUT's prediction for latency and the supernet restricted to a state (sliced weights, BN
re-estimated on cached training batches) for quality, and minimises the same criterion: cross-entropy on the
*selection* images (`--val-images` of the supernet's held-out split). Per target:
  default     nas.slim's default rules, run for that target alone; its evaluation count N sets every budget;
  paper       the paper's rule (method=paper) for that target: it stops when it reaches it (N_paper <= N);
  evolution   nas/search/evolution.py with N evaluations, and with 5N ("evolution 5x");
  random      N uniformly sampled states with predicted latency in [0.9T, T], the best kept.
`--methods` picks a subset (default first), and adds variants of the default rules: one addition taken out
("default -k": one candidate per action; "default -reach": no lowest-loss choice among candidates reaching the
target; "default -lookahead": no two-step finishes on the last step; "default -refill": no refill;
"default -measured": MetaPaths and stages ranked by alpha, not by their measured cost).
Each winner is then re-scored on *disjoint* images (the next `--val-images` of the split) with BN statistics
re-estimated on different training batches: a search's selection bias (the maximum of many noisy evaluations)
does not carry over. Written to benchmarks/results/search_cost.{csv,txt}; benchmarks/search_quality.py trains
the winners from scratch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.table import LatencyTable  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.search.evaluator import SubnetEvaluator, cached_batches  # noqa: E402
from nas.search.evolution import EvolutionConfig  # noqa: E402
from nas.search.loading import load_supernet, supernet_data_config  # noqa: E402
from nas.search.slimmer import METHODS  # noqa: E402
from nas.search.slimming import SearchStack, SlimConfig  # noqa: E402
from nas.search.state import SlimState  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ["default", "paper", "evolution", "random", "evolution 5x"]
VARIANTS = {  # the default rules with one addition taken out (--methods default "default -k" ...)
    "default -k": replace(METHODS["default"], per_action=1),
    "default -reach": replace(METHODS["default"], reach_best=False),
    "default -lookahead": replace(METHODS["default"], lookahead=0),
    "default -refill": replace(METHODS["default"], refill=False),
    "default -measured": replace(METHODS["default"], importance="alpha"),
}
SLIMMERS = {**METHODS, **VARIANTS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", default="runs/pipeline/lut/lut.csv")
    p.add_argument("--targets", nargs="+", type=float, default=[1.6, 1.2, 0.9])
    p.add_argument("--val-images", type=int, default=1000, help="selection images; as many disjoint ones re-score")
    p.add_argument("--bn-batches", type=int, default=4, help="training batches re-estimating BN (nas.slim: 4)")
    p.add_argument("--seed", type=int, default=0, help="another draw: other selection/re-scoring images, BN batches")
    p.add_argument("--out", default=str(RESULTS / "search_cost"), help="prefix of the .csv/.txt written")
    p.add_argument(
        "--methods", nargs="+", default=METHOD_ORDER, choices=METHOD_ORDER + list(VARIANTS), help="default first"
    )
    a = p.parse_args(argv)
    if a.methods[0] != "default":
        p.error("--methods must start with default: its evaluation count is every other search's budget")
    return a


class Setup:
    """The supernet, LUT, and the selection and re-scoring evaluators shared by every search."""

    def __init__(self, a: argparse.Namespace):
        cfg = compose("slim", [], SlimConfig)  # the slimmer's own defaults: bn_batches, batch_size, threads
        torch.set_num_threads(cfg.threads)
        self.net, ckpt = load_supernet(Path(a.supernet))
        self.table = LatencyTable.load(a.lut)
        data = supernet_data_config(ckpt)
        n, bn, bs = a.val_images, a.bn_batches, cfg.batch_size
        # --seed s: selection on held-out images [2sn, 2sn + n), re-scoring on the next n; BN batches drawn with s
        self.select_data = cached_batches(data, n, bn, bs, seed=a.seed, val_offset=2 * a.seed * n)
        self.rescore = SubnetEvaluator(
            self.net, *cached_batches(data, n, bn, bs, a.seed + 1, val_offset=(2 * a.seed + 1) * n)
        )
        self.stack = SearchStack(self.net, self.table)  # the latency and start state nas.slim searches with
        self.latency, self.start = self.stack.latency, self.stack.start

    def evaluator(self) -> SubnetEvaluator:
        return SubnetEvaluator(self.net, *self.select_data)  # a fresh one per search: its count is its own


def counted(evaluator: SubnetEvaluator) -> tuple[callable, list[int]]:
    calls = [0]

    def evaluate(s):
        calls[0] += 1
        return evaluator(s)

    return evaluate, calls


def slimmer_winner(su: Setup, method: str, target: float) -> tuple[SlimState, int]:
    evaluate, calls = counted(su.evaluator())
    slimmer = su.stack.slimmer(evaluate, SLIMMERS[method])
    last = slimmer.run(su.start, target)[-1]
    return (slimmer.refill(last, target, su.start) or [last])[-1].state, calls[0]


def baseline_winner(su: Setup, method: str, target: float, budget: int, seed: int) -> tuple[SlimState, int]:
    evaluate, calls = counted(su.evaluator())
    evo = su.stack.evolution(evaluate, EvolutionConfig(seed=seed))
    best, _ = evo.random_search(target, budget) if method == "random" else evo.run(target, budget)
    return best, calls[0]


def run_searches(a: argparse.Namespace) -> pd.DataFrame:
    su = Setup(a)
    rows = []
    for t in sorted(a.targets, reverse=True):
        budget = None
        for method in a.methods:
            t0 = time.time()
            if method in SLIMMERS:
                state, evals = slimmer_winner(su, method, t)
            else:
                n = budget * (5 if method.endswith("5x") else 1)
                state, evals = baseline_winner(su, method.split()[0], t, n, a.seed)
            budget = evals if method == "default" else budget
            sel, re = su.evaluator()(state), su.rescore(state)
            spec = su.net.spec_of(state.choices, state.widths)
            rows.append(
                {
                    "target_ms": t,
                    "method": method,
                    "evaluations": evals,
                    "wall_s": round(time.time() - t0, 1),
                    "predicted_ms": su.latency(state),
                    "select_loss": sel.loss,
                    "select_top1": sel.top1,
                    "rescore_loss": re.loss,
                    "rescore_top1": re.top1,
                    "arch": state.describe(),
                    "spec": json.dumps(spec.to_dict()),
                }
            )
            r = rows[-1]
            print(
                f"T={t:g} {method:<13} {evals:>4} evals {r['wall_s']:>6.1f} s  {r['predicted_ms']:.3f} ms  "
                f"select {sel.loss:.4f}/{sel.top1 * 100:.2f}%  re-scored {re.loss:.4f}/{re.top1 * 100:.2f}%  "
                f"{r['arch']}",
                flush=True,
            )
    return pd.DataFrame(rows)


def report(df: pd.DataFrame, a: argparse.Namespace) -> str:
    lines = [
        f"Search at equal evaluations; selection on {a.val_images} held-out images, re-scored on {a.val_images} "
        f"disjoint ones (BN re-estimated on {a.bn_batches} other training batches of 250). Supernet {a.supernet}, "
        f"LUT {a.lut}.",
        f"{'T (ms)':>7}  {'method':<13}{'evals':>6}{'wall s':>8}{'pred ms':>9}{'sel loss':>9}{'sel top1':>9}"
        f"{'re loss':>9}{'re top1':>9}  arch",
    ]
    for r in df.itertuples():
        lines.append(
            f"{r.target_ms:>7g}  {r.method:<13}{r.evaluations:>6}{r.wall_s:>8.1f}{r.predicted_ms:>9.3f}"
            f"{r.select_loss:>9.4f}{r.select_top1 * 100:>8.2f}%{r.rescore_loss:>9.4f}{r.rescore_top1 * 100:>8.2f}%"
            f"  {r.arch}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse_args(argv)
    setup_logging(logging.WARNING)
    t0 = time.time()
    df = run_searches(a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), df.to_csv(index=False))
    text = report(df, a) + f"\nsearch stage: {time.time() - t0:.0f} s"
    atomic_write_text(out.with_suffix(".txt"), text + "\n")
    print(text)
    return df


if __name__ == "__main__":
    main()
