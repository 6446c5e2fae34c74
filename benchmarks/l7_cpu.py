"""The l7 space (EfficientFormer-L7's 6-6-18-8 MetaPaths, widths up to 768, 224 px) end to end at smoke scale on
this CPU: its onnxruntime LUT (1824 rows), the LUT's fidelity, slimming a fresh supernet, and a few training steps.

    python benchmarks/l7_cpu.py --part lut        # build the LUT (adaptive round counts), wall time; resumable
    python benchmarks/l7_cpu.py --part fidelity   # adaptive vs fixed round counts on a row sample; validate_lut
    python benchmarks/l7_cpu.py --part slim       # slim a freshly initialised l7 supernet on synthetic data
    python benchmarks/l7_cpu.py --part train      # a few supernet training steps on synthetic data

Each part appends its figures to benchmarks/results/l7_cpu_<part>.txt. Run one part at a time, alone on the
machine (timings). The LUT's measurement settings are `ADAPTIVE`: a group of chains stops its rounds once every
chain's 25th percentile has moved by < 1% in each of the last two rounds (at least 4 rounds, at most 20), one
pass; warm-up and back-to-back runs per round as by default (10 and 5: with 3 and 2, rows differed from the fixed
method's by a median 10.6%, `results/l7_cpu_fidelity.txt`). `--part fidelity` shows what that costs: the same
rows measured with the fixed default settings (20 rounds, 3 passes), side by side in one run, and a validation of
the adaptive LUT on held-out whole networks.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, measure_items, space_rows  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from nas.build_lut import BuildLUTConfig  # noqa: E402
from nas.build_lut import run as build_lut  # noqa: E402
from nas.config import compose, setup_logging  # noqa: E402
from nas.train_supernet import TrainSupernetConfig  # noqa: E402
from nas.train_supernet import run as train_supernet  # noqa: E402
from nas.validate_lut import ValidateLUTConfig  # noqa: E402
from nas.validate_lut import run as validate_lut  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LUT = Path("runs/bench/l7/lut.csv")
ADAPTIVE = [  # the default warm-up and back-to-back runs; rounds stop once settled; one pass
    "measure.min_rounds=4",
    "measure.settle_pct=1.0",
    "measure.passes=1",
]


def log_result(part: str, text: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"l7_cpu_{part}.txt").open("a") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}\n")
    print(text, flush=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def part_lut(a: argparse.Namespace) -> None:
    t0 = time.time()
    over = ["space=l7", "backend=onnxruntime", f"out={LUT}", *ADAPTIVE]
    build_lut(compose("build_lut", over, BuildLUTConfig))
    table = LatencyTable.load(LUT)
    log_result(
        "lut",
        f"l7 onnxruntime LUT: {len(table.df)} rows incl. call and calibration networks, this invocation "
        f"{time.time() - t0:.0f} s wall (a resumed build counts only its own part); {table.describe()}; "
        f"settings {' '.join(ADAPTIVE)}",
    )


def part_fidelity(a: argparse.Namespace) -> None:
    """A random sample of rows measured twice in one run, adaptive and fixed (default) settings, shuffled order;
    then validate_lut on held-out whole networks (adaptive rounds, 2 passes)."""
    cfg = compose("build_lut", ["space=l7", "backend=onnxruntime", *ADAPTIVE], BuildLUTConfig)
    backend = make_backend("onnxruntime", 1)
    backend.setup()
    spec = cfg.space.max_spec(cfg.num_classes)
    rows = random.Random(a.seed).sample(space_rows(cfg.space, cfg.num_classes), a.rows)
    settings = {"adaptive": cfg.measure, "fixed": MeasureConfig()}
    got: dict[str, dict] = {k: {} for k in settings}
    wall = {k: 0.0 for k in settings}
    for k in random.Random(a.seed + 1).sample(list(settings) * 2, 4):  # two shuffled rounds of both settings
        t0 = time.time()
        measure_items(
            rows,
            spec,
            backend,
            settings[k],
            1,
            lambda res, k=k: [got[k].setdefault(i, []).append(s["ms"]) for i, s in res],
        )
        wall[k] += time.time() - t0
    ada = np.array([np.median(got["adaptive"][r]) for r in rows])
    fix = np.array([np.median(got["fixed"][r]) for r in rows])
    # rows above 0.05 ms in every measurement (a chain difference near zero makes ratios meaningless)
    big = np.array([min(got["adaptive"][r] + got["fixed"][r]) > 0.05 for r in rows])
    diff = np.abs(ada[big] / fix[big] - 1) * 100
    twice = np.array([abs(got["fixed"][r][0] / got["fixed"][r][1] - 1) * 100 for r, b in zip(rows, big) if b])
    text = (
        f"{len(rows)} random l7 rows ({big.sum()} above 0.05 ms), each setting measured twice in shuffled order: "
        f"wall adaptive {wall['adaptive']:.0f} s vs fixed {wall['fixed']:.0f} s "
        f"({wall['fixed'] / wall['adaptive']:.1f}x)\n"
        f"adaptive vs fixed, per row: median |diff| {np.median(diff):.1f}%, p90 {np.percentile(diff, 90):.1f}%, "
        f"worst {diff.max():.1f}%; fixed vs itself (its two runs): median {np.median(twice):.1f}%, "
        f"p90 {np.percentile(twice, 90):.1f}%, worst {twice.max():.1f}%"
    )
    log_result("fidelity", text)
    if a.rows_only:
        return
    # the held-out networks are timed whole with the LUT's own adaptive settings (fixed ones: ~1 min per network)
    val = ["space=l7", f"lut={LUT}", f"samples={a.samples}", "action_pairs=0", f"out={LUT.parent / 'validation'}"]
    val += [s for s in ADAPTIVE if not s.startswith("measure.passes")] + ["measure.passes=2"]
    df = validate_lut(compose("validate_lut", val, ValidateLUTConfig))
    cal = df.attrs["calibrated"]
    text = (
        f"validate_lut on {len(df)} held-out l7 networks: within ±10% {cal['within_10pct'] * 100:.0f}%, median |err| "
        f"{cal['median_abs_pct_err']:.1f}%, worst {cal['worst_abs_pct_err']:.1f}%, Spearman {cal['spearman']:.3f}, "
        f"drift since the build {df.attrs['drift'] * 100:+.1f}%"
    )
    log_result("fidelity", text)


def part_slim(a: argparse.Namespace) -> None:
    import torch

    from nas.data import DataConfig
    from nas.search.bounds import min_latency
    from nas.search.evaluator import SubnetEvaluator, cached_batches
    from nas.search.slimming import SearchStack
    from supernet.supernet import SuperNet

    torch.set_num_threads(2)
    torch.manual_seed(0)
    space = compose("train_supernet", ["space=l7"], TrainSupernetConfig).space
    net = SuperNet(space, num_classes=10).eval()  # freshly initialised: accuracies are meaningless, costs are not
    table = LatencyTable.load(LUT)
    data = DataConfig(name="synthetic", input_size=224, val_size=a.val_images, synthetic_size=256)
    val, bn = cached_batches(data, a.val_images, 1, a.batch)
    evaluator = SubnetEvaluator(net, val, bn)
    times: list[float] = []

    def timed_eval(state):
        t0 = time.time()
        acc = evaluator(state)
        times.append(time.time() - t0)
        return acc

    stack = SearchStack(net, table)  # the latency and start state nas.slim searches with
    latency, start = stack.latency, stack.start
    floor, _ = min_latency(net, table, 16)
    targets = [round(latency(start) * f, 2) for f in a.fractions]
    t0 = time.time()
    traj = stack.slimmer(timed_eval).run(start, targets)
    log_result(
        "slim",
        f"fresh l7 supernet, synthetic 224 px data ({a.val_images} val images, {len(bn)} BN batch of {a.batch}), "
        f"2 threads: start {latency(start):.1f} ms predicted (floor {floor:.2f} ms), targets {targets} ms reached in "
        f"{len(traj) - 1} steps, {len(times)} evaluations, {time.time() - t0:.0f} s; per evaluation median "
        f"{np.median(times):.2f} s (p25 {np.percentile(times, 25):.2f}, p75 {np.percentile(times, 75):.2f}); "
        f"peak RSS {peak_rss_gib():.2f} GiB",
    )


def part_train(a: argparse.Namespace) -> None:
    over = [
        "space=l7",
        "data=synthetic",
        "data.input_size=224",
        f"data.synthetic_size={a.steps * a.batch + 8}",  # 8 go to the val split
        "data.val_size=8",
        f"train.batch_size={a.batch}",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.threads=2",
        "train.eval_batch_size=8",
        f"out=runs/bench/l7/train-{time.strftime('%H%M%S')}",
    ]
    t0 = time.time()
    out = train_supernet(compose("train_supernet", over, TrainSupernetConfig))
    wall = time.time() - t0
    log_result(
        "train",
        f"l7 supernet (soft Gumbel-softmax), synthetic 224 px, batch {a.batch}, {a.steps} steps + validation, "
        f"2 threads: {wall:.0f} s wall in all, {wall / a.steps:.1f} s per step (upper bound: start-up and "
        f"validation included); peak RSS {peak_rss_gib():.2f} GiB; outputs {out}",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("lut", "fidelity", "slim", "train"), required=True)
    p.add_argument("--rows", type=int, default=24, help="fidelity: rows measured both ways")
    p.add_argument("--samples", type=int, default=12, help="fidelity: held-out networks validated")
    p.add_argument("--rows-only", action="store_true", help="fidelity: skip the validation of the LUT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=64, help="slim: validation images per evaluation")
    p.add_argument("--batch", type=int, default=32, help="slim: BN/eval batch; train: batch size")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.95, 0.9], help="slim: targets / start latency")
    p.add_argument("--steps", type=int, default=4, help="train: training steps")
    a = p.parse_args()
    setup_logging()
    {"lut": part_lut, "fidelity": part_fidelity, "slim": part_slim, "train": part_train}[a.part](a)


if __name__ == "__main__":
    main()
