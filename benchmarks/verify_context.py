"""Does a network measure slower right after the supernet was evaluated? (issue #21, `--verify`'s reading)

    python benchmarks/verify_context.py --supernet SN/supernet.pt --lut LUT/lut.csv --out OUT

`nas.slim --verify` measures inside the slimming process: between its measurements of one target, the refill
scores candidate states on the supernet (`evaluate` over the search's images: large batches, the heavy vector units
busy for seconds). The independent re-measurement runs its groups back to back in a fresh loop. Over 16 runs
`--verify` read its states a median 1.7% slower than the re-measurement (benchmarks/README.md section 6).

This times `--networks` held-out networks (`mixed_specs`, spread over the size range), sorted by prediction and cut
into windows of 6 neighbours, each measured as `--verify` measures a group (`measure_networks` with the table's
calibration networks as references, read drift removed), two ways, in a shuffled order per window and round:

* `after_eval`: right after one evaluation of the supernet's derived network (the slimming's start) on `--images`
  random images in the search's batch size, at the slimming's thread count;
* `plain`: right after the previous measurement.

Reported: the median of after_eval / plain over networks and rounds, its range over rounds, and by network.
Output: `--out` .txt and .csv.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_choice import held_out, write  # noqa: E402

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.bundle_measure import device_name  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_networks  # noqa: E402
from nas.config import compose  # noqa: E402
from nas.errors import run_cli  # noqa: E402
from nas.search.evaluator import evaluate  # noqa: E402
from nas.search.loading import load_supernet  # noqa: E402
from nas.slim import SlimConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--lut", required=True, help="a torch LUT with calibration networks, of the supernet's space")
    p.add_argument("--networks", type=int, default=24, help="held-out networks (default 24)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every window both ways (default 3)")
    p.add_argument("--images", type=int, default=2000, help="images per evaluation (default: the search's 2000)")
    p.add_argument("--seed", type=int, default=2027)
    p.add_argument("--out", type=Path, default=RESULTS / "verify_context")
    return p.parse_args()


def main() -> None:
    a = parse_args()
    t0 = time.time()
    table, cfg, specs = held_out(a.lut, a.networks, a.seed)
    slim_cfg = compose("slim", [], SlimConfig)
    pred = [table.predict(s) for s in specs]
    net, _ = load_supernet(a.supernet)
    model = net.extract(net.derive()).eval()  # the slimming's start: what its first evaluations score
    gen = torch.Generator().manual_seed(a.seed)
    shape = (net.spec.in_chans, net.spec.input_size, net.spec.input_size)
    batches = []
    for k in range(0, a.images, slim_cfg.batch_size):
        n = min(slim_cfg.batch_size, a.images - k)
        batches.append(
            (torch.randn(n, *shape, generator=gen), torch.randint(0, net.spec.num_classes, (n,), generator=gen))
        )
    backend = make_backend(str(table.meta["backend"]), int(table.meta["threads"]))
    mcfg, refs, batch = MeasureConfig(), table.networks(), int(table.meta["batch"])
    window = max(mcfg.interleave - mcfg.references, 1)
    rng, rows, eval_s = random.Random(a.seed), [], []

    def measure(part: list, seed: int) -> list[float]:
        backend.setup()  # the LUT's thread count, as --verify's backend sets it
        return [r["ms"] / r["drift"] for r in measure_networks(part, backend, mcfg, batch, seed, references=refs)]

    for r in range(a.rounds):
        starts = list(range(0, len(specs), window))
        rng.shuffle(starts)
        for k in starts:
            order = ["after_eval", "plain"]
            rng.shuffle(order)
            for style in order:
                if style == "after_eval":
                    torch.set_num_threads(slim_cfg.threads)
                    t = time.perf_counter()
                    with torch.inference_mode():
                        evaluate(model, batches)
                    eval_s.append(time.perf_counter() - t)
                ms = measure(specs[k : k + window], a.seed + 1000 * r + k)
                rows += [
                    {"round": r, "style": style, "network": k + i, "predicted_ms": pred[k + i], "ms": m}
                    for i, m in enumerate(ms)
                ]
        print(f"round {r + 1}/{a.rounds} done ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["round", "network"], columns="style", values="ms")
    ratio = wide["after_eval"] / wide["plain"]
    per_round = ratio.groupby(level="round").median()
    by_net = ratio.groupby(level="network").median()
    lines = [
        f"Measured after a supernet evaluation or not, on {device_name()}; LUT {a.lut} ({table.describe()}); "
        f"{a.networks} held-out networks ({min(pred):.3f}-{max(pred):.3f} ms predicted), {a.rounds} rounds; "
        f"evaluations of {a.images} images at {slim_cfg.threads} threads took a median {np.median(eval_s):.1f} s; "
        f"{time.time() - t0:.0f} s in all",
        "",
        f"after_eval / plain: median {np.median(ratio) - 1:+.2%} (rounds {per_round.min() - 1:+.2%} to "
        f"{per_round.max() - 1:+.2%}); above 1 for {(ratio > 1).mean():.0%} of {len(ratio)} readings",
        "",
        "by network (median over rounds), in prediction order:",
        *[f"  {pred[i]:.3f} ms  {b - 1:+.2%}" for i, b in by_net.items()],
    ]
    write(a.out, "\n".join(lines), df)


if __name__ == "__main__":
    run_cli(main)
