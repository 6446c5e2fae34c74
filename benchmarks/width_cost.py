"""What does the supernet say a narrower stage costs, against a dropped MetaPath? (issue #21, item 6)

    python benchmarks/width_cost.py --supernet SN --lut LUT --trajectory SLIM_OUT/trajectory.csv --out PREFIX

`--verify`'s refill spends leftover latency only on moves that lower the supernet's loss, and on the main job's
supernet no trajectory ever narrowed a stage (benchmarks/README.md, section 6). This probe asks the supernet what
each move costs. At every state of a slimming trajectory (its trajectory.csv), every active MetaPath is dropped and
every stage narrowed by the width step, and each is scored on the search's own images (`nas.slim`'s defaults:
`val_images`, `bn_batches`, the same seed): the rise in mean cross-entropy, paired per image with its standard
error, the predicted ms saved (the LUT), and their ratio. Per state it reports the cheapest drop and the cheapest
narrowing per ms saved. Output: PREFIX.txt and PREFIX.csv (every move). Nothing is timed.

    python benchmarks/width_cost.py ... --target 1.0 --pair DIR

also writes a pair of architectures for the from-scratch check: DIR/emitted.yaml, the trajectory's first state
predicted at or below the target (what plain slimming emits), and DIR/narrowed.yaml, the state before it with stages
narrowed instead (the supernet's cheapest narrowing per ms, again and again, until it is predicted at or below the
target). Train each with `python -m nas.train arch=DIR/<name>.yaml out=... train.seed=K`.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify_targets import remeasure  # noqa: E402

from latency_lut.table import LatencyTable  # noqa: E402
from nas.search.evaluator import SubnetEvaluator, cached_batches  # noqa: E402
from nas.search.loading import load_supernet, supernet_data_config  # noqa: E402
from nas.search.slimmer import drop_path_candidates, narrow_stage_candidates  # noqa: E402
from nas.search.slimming import SearchStack, SlimConfig  # noqa: E402
from nas.search.state import SlimState  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402


def trajectory_states(path: Path) -> list[tuple[int, SlimState]]:
    """(step, state) of every row of a trajectory.csv."""
    df = pd.read_csv(path)
    out = []
    for _, r in df.iterrows():
        choices = tuple(tuple(s.split(",")) if s else () for s in r["choices"].split("|"))
        widths = tuple(int(w) for w in r["widths"].strip("[]").split(","))
        out.append((int(r["step"]), SlimState(choices, widths)))
    return out


@torch.no_grad()
def image_losses(evaluator: SubnetEvaluator, state: SlimState) -> np.ndarray:
    """Per-image cross-entropy of the state's sub-network (BN re-estimated, as the search scores it)."""
    model = evaluator.model(state)
    return torch.cat([F.cross_entropy(model(x), y, reduction="none") for x, y in evaluator.val]).double().numpy()


def search_setup(a: argparse.Namespace) -> tuple[SearchStack, SubnetEvaluator]:
    """The supernet and LUT made ready as `nas.slim` makes them, and its evaluator on the same images."""
    defaults = SlimConfig()
    torch.set_num_threads(a.threads)
    net, ckpt = load_supernet(Path(a.supernet))
    val, bn = cached_batches(
        supernet_data_config(ckpt), defaults.val_images, defaults.bn_batches, defaults.batch_size, defaults.seed
    )
    return SearchStack(net, LatencyTable.load(a.lut)), SubnetEvaluator(net, val, bn)


def probe(a: argparse.Namespace, stack: SearchStack, evaluator: SubnetEvaluator) -> pd.DataFrame:
    """Every drop and every narrowing at every state of the trajectory, scored (a row each)."""
    path_scores, stage_scores = stack.net.importance()
    losses = functools.cache(functools.partial(image_losses, evaluator))  # a step's state was the last one's move
    rows = []
    for step, state in trajectory_states(Path(a.trajectory)):
        base, lat = losses(state), stack.latency(state)
        moves = drop_path_candidates(state, path_scores) + narrow_stage_candidates(
            state, stage_scores, SlimConfig().width_step
        )
        for cand in moves:
            d = losses(cand.state) - base
            saved = lat - stack.latency(cand.state)
            rows.append(
                {
                    "step": step,
                    "state_ms": lat,
                    "action": cand.action,
                    "where": cand.where,
                    "saved_ms": saved,
                    "share_saved": saved / lat,
                    "loss_rise": d.mean(),
                    "loss_rise_se": d.std(ddof=1) / math.sqrt(len(d)),
                    "cost_per_ms": d.mean() / saved if saved > 0 else math.inf,
                }
            )
        print(f"step {step}: {len(moves)} moves scored", file=sys.stderr)
    return pd.DataFrame(rows)


def write_pair(a: argparse.Namespace, stack: SearchStack, evaluator: SubnetEvaluator) -> str:
    """DIR/emitted.yaml (the first trajectory state predicted at or below the target) and DIR/narrowed.yaml (the
    state before it, narrowed by the supernet's cheapest narrowing per ms until it is predicted at or below the
    target), both measured side by side; a line on each."""
    net = stack.net
    score = functools.cache(evaluator)  # each narrowing taken was scored as a candidate the round before
    states = trajectory_states(Path(a.trajectory))
    k = next((i for i, (_, s) in enumerate(states) if stack.latency(s) <= a.target), None)
    if k is None or k == 0:
        raise SystemExit(f"--target {a.target:g}: no trajectory state after the start is predicted at or below it")
    emitted, cur = states[k][1], states[k - 1][1]
    _, stage_scores = net.importance()
    while stack.latency(cur) > a.target:
        options = narrow_stage_candidates(cur, stage_scores, SlimConfig().width_step)
        if not options:
            raise SystemExit(f"--target {a.target:g}: narrowing alone cannot reach it from step {states[k - 1][0]}")
        base, lat = score(cur).loss, stack.latency(cur)
        cur = min(options, key=lambda c: (score(c.state).loss - base) / max(lat - stack.latency(c.state), 1e-9))
        cur = cur.state
    out = Path(a.pair)
    out.mkdir(parents=True, exist_ok=True)
    pair = (("emitted", emitted), ("narrowed", cur))
    specs = [net.spec_of(state.choices, state.widths) for _, state in pair]
    passes = remeasure(specs, stack.table, 2)  # side by side, the LUT's references in every group
    lines = ["", f"pair for target {a.target:g} ms (written to {out}; measured twice, each group's drift removed):"]
    for i, ((name, state), spec) in enumerate(zip(pair, specs)):
        s = score(state)
        spec.save(out / f"{name}.yaml")
        ms = " / ".join(f"{p[i]['ms'] / p[i]['drift']:.4f}" for p in passes)
        lines.append(
            f"  {name:<9} {state.describe():<56} predicted {stack.latency(state):.4f} ms, measured {ms} ms; "
            f"supernet loss {s.loss:.4f}, top-1 {s.top1 * 100:.2f}%"
        )
    return "\n".join(lines) + "\n"


def report(df: pd.DataFrame, a: argparse.Namespace) -> str:
    lines = [
        f"supernet {a.supernet}, LUT {a.lut}, trajectory {a.trajectory}",
        "per state: the cheapest MetaPath drop and the cheapest stage narrowing, by loss rise per ms saved",
        "(loss rise: mean cross-entropy, paired per image, +- its standard error; saved: predicted ms and share of the "
        "state's latency)",
        "",
        f"{'step':>4} {'state ms':>9}  {'cheapest drop':<16}{'saved':>15}{'loss rise':>20}{'/ms':>9}  "
        f"{'cheapest narrowing':<20}{'saved':>15}{'loss rise':>20}{'/ms':>9}",
    ]
    ratios = []
    for step, g in df.groupby("step", sort=True):
        cells = [f"{step:>4} {g['state_ms'].iloc[0]:>9.3f}"]
        best = {}
        for action, width in (("drop_path", 16), ("narrow_stage", 20)):
            sub = g[(g["action"] == action) & (g["saved_ms"] > 0)]
            if sub.empty:
                cells.append(f"  {'-':<{width}}{'':>15}{'':>20}{'':>9}")
                continue
            r = sub.loc[sub["cost_per_ms"].idxmin()]
            best[action] = r["cost_per_ms"]
            cells.append(
                f"  {r['where']:<{width}}{r['saved_ms']:>8.3f} ({r['share_saved'] * 100:>3.0f}%)"
                f"{r['loss_rise']:>+11.4f} +- {r['loss_rise_se']:.4f}{r['cost_per_ms']:>+9.4f}"
            )
        if len(best) == 2:
            ratios.append((best["drop_path"], best["narrow_stage"]))
        lines.append("".join(cells))
    lines.append("")
    cheaper = sum(n < d for d, n in ratios)
    lines.append(
        f"the cheapest narrowing cost less per ms saved than the cheapest drop at {cheaper} of {len(ratios)} states"
    )
    narrow = df[df["action"] == "narrow_stage"]
    drop = df[df["action"] == "drop_path"]
    lines.append(
        f"loss rise, median over all moves: narrowing {narrow['loss_rise'].median():+.4f} for "
        f"{narrow['share_saved'].median() * 100:.1f}% of the latency; a drop {drop['loss_rise'].median():+.4f} for "
        f"{drop['share_saved'].median() * 100:.1f}%"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--lut", required=True)
    p.add_argument("--trajectory", required=True, help="a nas.slim output's trajectory.csv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="output prefix (PREFIX.txt, PREFIX.csv)")
    p.add_argument("--target", type=float, help="with --pair: the target (ms, predicted) the pair is made for")
    p.add_argument("--pair", help="write DIR/emitted.yaml and DIR/narrowed.yaml for --target")
    a = p.parse_args()
    if bool(a.target) != bool(a.pair):
        p.error("--target and --pair go together")
    stack, evaluator = search_setup(a)
    df = probe(a, stack, evaluator)
    text = report(df, a)
    if a.pair:
        text += write_pair(a, stack, evaluator)
    atomic_write_text(Path(f"{a.out}.csv"), df.to_csv(index=False))
    atomic_write_text(Path(f"{a.out}.txt"), text)
    print(text)


if __name__ == "__main__":
    main()
