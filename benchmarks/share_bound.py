"""How much of a target can a state of the space use without a higher supernet loss? (issue #21, item 6)

    python benchmarks/share_bound.py --supernet SN --lut LUT --out PREFIX

`--verify` is asked to emit, over 10 targets, states that use a median 97% of their target. Section 6 of
benchmarks/README.md found 91-95%, and put it down to block-sized steps and to the refill's rule that latency is
only spent where the supernet's loss falls. This probe checks that reading on predictions alone (nothing is timed).
For the targets of `benchmarks/verify_targets.py` (geometric, 0.95x to `--low`x the start latency), it slims plainly
as `nas.slim` does (trajectory, then refill) and then enumerates every state at full widths, in two families:

- `drops`: each MetaPath of the search's start state kept or set to Identity: every state that dropping and
  restoring MetaPaths can reach;
- `space`: every valid choice of the space (MB4D, MB3D as a suffix of stages 3-4, or Identity per MetaPath).

Per target and family it reports the largest share of the target (predicted / target) any state reaches, how many
states fall in the band [`--band` x target, target], and, for up to `--per-target` of them drawn at random (seeded),
their supernet loss on the search's own images against the emitted state's: how many are no worse, and the best.
If band states no worse than the emitted one exist, the search leaves latency *and* loss on the table; if none do,
the share goal asks for latency the supernet cannot turn into a lower loss. Output: PREFIX.txt and PREFIX.csv
(every scored state).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify_targets import spread_targets  # noqa: E402
from width_cost import search_setup  # noqa: E402

from nas.errors import run_cli  # noqa: E402
from nas.search.evolution import repair  # noqa: E402
from nas.search.slimming import SearchStack, SlimConfig, search  # noqa: E402
from nas.search.state import SlimState  # noqa: E402
from nas.search.targets import emitted  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402


def stage_options(stage: tuple[str, ...], choices: tuple[str, ...], family: str) -> list[tuple[str, ...]]:
    """Every valid choice of one stage: `drops`, each of `stage`'s MetaPaths kept or Identity; `space`, any of
    `choices` per MetaPath with MB3D a suffix (`repair` leaves it unchanged).

    >>> stage_options(("4d", "3d"), ("4d", "3d", "id"), "drops")
    [('4d', '3d'), ('4d', 'id'), ('id', '3d'), ('id', 'id')]
    >>> len(stage_options(("4d", "4d"), ("4d", "3d", "id"), "space"))
    8
    """
    if family == "drops":
        return list(itertools.product(*[(c, "id") if c != "id" else ("id",) for c in stage]))
    return [o for o in itertools.product(choices, repeat=len(stage)) if repair((o,)) == (o,)]


def enumerate_states(stack: SearchStack, family: str) -> list[SlimState]:
    start = stack.start
    per_stage = [stage_options(s, tuple(stack.net.stage_choices[i]), family) for i, s in enumerate(start.choices)]
    states = (SlimState(tuple(c), start.widths) for c in itertools.product(*per_stage))
    return [s for s in states if s.num_blocks > 0]  # every MetaPath dropped is not a network


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--lut", required=True)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--low", type=float, default=0.35, help="lowest target as a fraction of the start latency")
    p.add_argument("--band", type=float, default=0.97, help="the band's lower edge, as a share of the target")
    p.add_argument("--per-target", type=int, default=15, help="band states scored per target and family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="output prefix (PREFIX.txt, PREFIX.csv)")
    a = p.parse_args()
    t0 = time.time()
    stack, evaluator = search_setup(a)  # as nas.slim makes them: SlimConfig's images and seed
    table = stack.table
    start_ms = stack.latency(stack.start)
    targets = spread_targets(start_ms, a.targets, a.low)
    traj, refills, _, _ = search(SlimConfig(), targets, stack.net, table, evaluator)
    families = {f: enumerate_states(stack, f) for f in ("drops", "space")}
    lat = {f: np.array([stack.latency(s) for s in states]) for f, states in families.items()}
    rng = np.random.default_rng(a.seed)
    rows, lines = [], []
    for t in targets:
        e = emitted(t, traj, refills[t], None).step
        base = e.val_loss  # scored by the same evaluator during the search
        line = [f"{t:>7.3f}  emitted {e.latency_ms / t * 100:5.1f}% loss {base:.4f}"]
        for f, states in families.items():
            fits = lat[f] <= t
            best_share = lat[f][fits].max() / t if fits.any() else float("nan")
            band = np.flatnonzero(fits & (lat[f] >= a.band * t))
            pick = rng.choice(band, size=min(a.per_target, len(band)), replace=False) if len(band) else band
            losses = []
            for i in pick:
                loss = evaluator(states[i]).loss
                losses.append(loss)
                rows.append(
                    {
                        "target": t,
                        "family": f,
                        "state": states[i].describe(),
                        "choices": "|".join(",".join(s) for s in states[i].choices),
                        "predicted_ms": lat[f][i],
                        "share": lat[f][i] / t,
                        "loss": loss,
                        "emitted_loss": base,
                    }
                )
            no_worse = sum(x <= base for x in losses)
            best = f"best {min(losses):.4f}" if losses else "best    -  "
            line.append(
                f"| {f}: max share {best_share * 100:5.1f}%, band {len(band):>5}, scored {len(losses):>3}, "
                f"no worse {no_worse:>3}, {best}"
            )
        lines.append("  ".join(line))
        print(lines[-1], file=sys.stderr)
    head = [
        f"supernet {a.supernet}, LUT {a.lut} ({table.describe()})",
        f"start {stack.start.describe()} at {start_ms:.3f} ms predicted; states at full widths: "
        + ", ".join(f"{f} {len(s)}" for f, s in families.items()),
        f"band: predicted within [{a.band:g}, 1] x target; up to {a.per_target} band states per target and family "
        f"scored on the search's images (seed {a.seed}); loss: mean cross-entropy; {time.time() - t0:.0f} s in all",
        "",
        " target  plain slimming (refilled): share, loss  | per family: the largest share any state reaches; "
        "band states; scored; no worse than emitted; best loss",
    ]
    df = pd.DataFrame(rows)
    summary = []
    for f in families:
        sub = df[df["family"] == f]
        worse_all = sub.groupby("target").apply(lambda g: (g["loss"] > g["emitted_loss"]).all(), include_groups=False)
        summary.append(
            f"{f}: {int((sub['loss'] <= sub['emitted_loss']).sum())} of {len(sub)} scored band states no worse than "
            f"the emitted state; targets where every scored band state is worse: {int(worse_all.sum())} of "
            f"{len(worse_all)}"
        )
    text = "\n".join(head + lines + [""] + summary) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(f"{a.out}.txt"), text)
    atomic_write_text(Path(f"{a.out}.csv"), df.to_csv(index=False))
    print(text)


if __name__ == "__main__":
    run_cli(main)
