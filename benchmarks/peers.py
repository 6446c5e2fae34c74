"""The paper's Figure 1 for this device and data: the search's models against what a user would take from timm's
zoo instead, at equal measured latency, on each runtime (issue #24).

    python benchmarks/peers.py                                   # quickstart supernet, fashion_mnist, ort + torch
    python benchmarks/peers.py --runtimes onnxruntime torch executorch --seeds 0 1 2
    python benchmarks/peers.py --quick                           # smoke scale: digits, 3 zoo models, 1 seed

Stages (runs are kept under --work and reused for the same model, data and recipe; delete it to start afresh):
1. Timing. Every zoo model (timm, random weights, the data's classes and input size, re-parameterised with
   timm's `reparameterize_model` where it has a deploy form) is timed on each runtime to place the targets (2).
   After the search, every zoo model and every searched model (fused) is timed again on each runtime, all of
   them side by side in one run; these are the reported latencies. The project's whole-network method: all
   models of a run interleaved in shuffled rounds, the 25th percentile, --passes passes, each model's fastest
   pass (latency_lut.measure).
2. Search. Per runtime, a LUT of that runtime (--lut RUNTIME=PATH, else built into --work with the project's
   defaults) and one slimming trajectory of the supernet to --targets targets spread over the zoo's latencies on
   that runtime (evenly in log-latency between the fastest zoo model and the slowest under our start). Our
   models for that runtime are its emitted architectures.
3. Training, the same recipe for everyone (--recipe: a shortened tiny_cpu recipe on --data), --seeds seeds,
   --jobs runs at once:
   - ours at the recipe's learning rate (the one chosen for our models), every seed;
   - ours (unless --no-sweep-ours) and each zoo model near a target (at or under --near x a runtime's largest
     target, less --skip-train) in a sweep of --lr-factors x that rate at the first seed, the largest doubled up to
     --lr-extend times while it is the best; the rate with the best *held-out* top-1 (the validation split carved
     from the training data, never the test split) is trained at every seed ("best of sweep"), and is the model's
     figure. Its x1 runs ("same recipe": ours at every seed, a zoo model at the first) are reported beside it.
4. Report, per runtime and target latency L: our best model measuring at or under L against the best zoo model
   measuring at or under L (mean ± SE over seeds), and `peers.png`: test top-1 against measured latency, one
   panel per runtime, with the Pareto front of each family.
Written to benchmarks/results/peers.{csv,txt,png} (another prefix: --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_quality  # noqa: E402

from latency_lut.backends import make_backend  # noqa: E402
from latency_lut.measure import MeasureConfig, combine_passes, measure_interleaved  # noqa: E402
from latency_lut.table import LatencyTable  # noqa: E402
from nas.config import compose, setup_logging, to_yaml  # noqa: E402
from nas.train import TrainModelConfig  # noqa: E402
from supernet import build_model  # noqa: E402
from supernet.arch import ArchSpec  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402
from supernet.supernet import SuperNet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ZOO = [
    "mobilenetv3_small_050",
    "mobilenetv3_small_075",
    "mobilenetv3_small_100",
    "mobilenetv2_035",
    "mobilenetv2_050",
    "mobilenetv2_075",
    "lcnet_050",
    "lcnet_075",
    "lcnet_100",
    "mobilenetv4_conv_small_050",
    "mobilenetv4_conv_small",
    "tinynet_d",
    "tinynet_e",
    "mnasnet_small",
    "semnasnet_050",
    "efficientvit_m0",
    "efficientformerv2_s0",
    "mobilevitv2_050",
    "ghostnet_050",
    "repvit_m0_9",
]
FAMILIES = [  # name prefix -> family drawn with one Pareto front
    ("mobilenetv3", "MobileNetV3"),
    ("mobilenetv2", "MobileNetV2"),
    ("mobilenetv4", "MobileNetV4"),
    ("lcnet", "LCNet"),
    ("tinynet", "TinyNet"),
    ("mnasnet", "MnasNet"),
    ("semnasnet", "MnasNet"),
    ("efficientvit", "EfficientViT (MSRA)"),
    ("efficientformerv2", "EfficientFormerV2"),
    ("mobilevitv2", "MobileViTv2"),
    ("ghostnet", "GhostNet"),
    ("repvit", "RepViT"),
]
RECIPE = ["data.train_limit=10000", "data.val_size=1000", "train.epochs=2", "train.warmup_epochs=0.2"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--supernet", default="runs/pipeline/supernet/supernet.pt")
    p.add_argument("--lut", action="append", default=[], help="RUNTIME=PATH, a LUT of that runtime (repeatable)")
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--zoo", nargs="+", default=ZOO)
    p.add_argument("--targets", type=int, default=4, help="target latencies per runtime")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lr-factors", nargs="+", type=float, default=[1.0, 2.0, 4.0], help="x the recipe's lr_base")
    p.add_argument(
        "--lr-extend",
        type=int,
        default=3,
        help="while a model's best rate is the sweep's largest, also try twice it (at most this many times)",
    )
    p.add_argument("--recipe", nargs="*", default=RECIPE, help="overrides shared by every training run")
    p.add_argument(
        "--no-sweep-ours",
        dest="sweep_ours",
        action="store_false",
        help="train ours at the recipe's rate only (by default ours get the zoo's sweep too)",
    )
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--passes", type=int, default=2, help="timing passes per runtime (each model's fastest kept)")
    p.add_argument("--val-images", type=int, default=500, help="slimming's scoring images")
    p.add_argument(
        "--near",
        type=float,
        default=1.25,
        help="train a zoo model only where it measures at or under this x a runtime's largest target",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="training runs at once, each with cpu_count/jobs intra-op threads"
    )
    p.add_argument(
        "--long-epochs",
        type=int,
        default=0,
        help="also train, at the first runtime's largest and smallest comparison latency, the best model of each "
        "side at or under it for this many epochs (first seed): does the short recipe's lead hold? 0: skip",
    )
    p.add_argument(
        "--skip-train",
        nargs="*",
        default=[],
        help="zoo models timed (they still place the targets) but not trained, listed as such in the report",
    )
    p.add_argument("--work", default="runs/bench/peers")
    p.add_argument("--out", default=str(RESULTS / "peers"), help="prefix of the .csv/.txt/.png written")
    p.add_argument("--quick", action="store_true", help="smoke scale: digits, 3 zoo models, 1 seed, 2 targets")
    a = p.parse_args(argv)
    if a.quick:
        a.data, a.seeds, a.targets, a.passes = "digits", [0], 2, 1
        a.zoo = ZOO[:1] + ["lcnet_050", "mobilenetv2_035"] if a.zoo == ZOO else a.zoo
        a.lr_factors, a.val_images = [0.5, 1.0], 100
        a.recipe = ["data.val_size=200", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=64"]
    bad = [r for r in a.runtimes if r not in ("onnxruntime", "torch", "executorch")]
    if bad:
        p.error(f"--runtimes: {bad} unknown; choose from onnxruntime, torch, executorch")
    if any("=" not in x for x in a.lut):
        p.error(f"--lut takes RUNTIME=PATH, got {[x for x in a.lut if '=' not in x]}")
    a.luts = dict(x.split("=", 1) for x in a.lut)
    if set(a.skip_train) - set(a.zoo):
        p.error(f"--skip-train: {sorted(set(a.skip_train) - set(a.zoo))} are not in --zoo")
    if a.jobs > 1:  # the thread count is not part of the recipe (search_quality.same_recipe ignores it)
        a.recipe = [*a.recipe, f"train.threads={max(1, (os.cpu_count() or 1) // a.jobs)}"]
    return a


def family(name: str) -> str:
    return next((f for prefix, f in FAMILIES if name.startswith(prefix)), name)


def zoo_model(name: str, num_classes: int, size: int) -> torch.nn.Module:
    """A timm model for this data: random weights (no hub here), the data's classes and, where the model has a
    fixed-resolution part (attention biases), its input size."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=size)
    except TypeError:  # no img_size argument: the model is resolution-free
        return timm.create_model(name, pretrained=False, num_classes=num_classes)


def deploy_form(model: torch.nn.Module) -> torch.nn.Module:
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model.eval())


def recipe_cfg(a: argparse.Namespace, seed: int, lr_factor: float, out: Path) -> TrainModelConfig:
    """nas.train's config for the shared recipe (`arch=l1` only fills the required key: the model is the zoo's)."""
    over = ["arch=l1", f"out={out}", f"data={a.data}", f"train.seed={seed}", *a.recipe]
    return compose("train", [*over, f"train.lr_base={base_lr(a) * lr_factor!r}"], TrainModelConfig)


def base_lr(a: argparse.Namespace) -> float:
    """The shared recipe's lr_base, which --lr-factors multiply."""
    return compose("train", ["arch=l1", f"data={a.data}", *a.recipe], TrainModelConfig).train.lr_base


def train_ours(a: argparse.Namespace, spec_json: str, seed: int, factor: float) -> dict[str, float]:
    """Test and held-out top-1 of one run of our architecture with the shared recipe at `factor` x its learning
    rate (x1 under --work/ours, others under --work/ours_lr<factor>), reused when already trained with it."""
    root = Path(a.work) / ("ours" if factor == 1 else f"ours_lr{factor:g}")
    recipe = list(a.recipe) if factor == 1 else [*a.recipe, f"train.lr_base={base_lr(a) * factor!r}"]
    test, _, name = search_quality.train_arch(spec_json, root, seed, a.data, recipe)
    val = json.loads((root / name / f"seed{seed}" / "metrics.json").read_text())["val_top1"]
    return {"test_top1": test, "val_top1": val}


def train_zoo(a: argparse.Namespace, name: str, seed: int, lr_factor: float, size: int) -> dict[str, float]:
    """Test and held-out top-1 of one zoo run with the shared recipe, reused when already trained with it."""
    from torch.utils.data import DataLoader

    from nas.data import build_datasets
    from nas.training.trainer import Trainer
    from supernet.complexity import count_params

    out = Path(a.work) / "zoo" / name / f"lr{lr_factor:g}" / f"seed{seed}"
    cfg = recipe_cfg(a, seed, lr_factor, out)
    cfg.data.input_size = size
    if (out / "metrics.json").is_file() and search_quality.same_recipe(out / "config.yaml", cfg):
        return json.loads((out / "metrics.json").read_text())
    splits = build_datasets(cfg.data)
    torch.manual_seed(seed)
    model = zoo_model(name, splits.num_classes, size)
    t0 = time.time()
    trainer = Trainer(model, splits, cfg.train, out, meta={"zoo": name, "input_size": size})
    metrics = trainer.fit()
    test = trainer.evaluate(DataLoader(splits.test, batch_size=cfg.train.eval_batch_size), model)
    report = {"test_top1": test, "val_top1": metrics[-1]["val_acc"], "params_M": count_params(model) / 1e6}
    report["train_wall_s"] = round(time.time() - t0, 1)
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    return report


def time_models(
    a: argparse.Namespace, runtime: str, models: dict[str, tuple[torch.nn.Module, int]], stage: str
) -> dict[str, float]:
    """Every model on `runtime`, interleaved in shuffled rounds; per model its fastest pass's 25th percentile.
    Kept in --work (timings_<stage>_<runtime>.json) and reused by a resumed run for the same models and passes."""
    cache = Path(a.work) / f"timings_{stage}_{runtime}.json"
    key = {"models": sorted(models), "passes": a.passes, "threads": a.threads}
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if stored.get("key") == key:
        return stored["ms"]
    ms = _time_models(a, runtime, models)
    atomic_write_text(cache, json.dumps({"key": key, "ms": ms}, indent=1))
    return ms


def _time_models(a: argparse.Namespace, runtime: str, models: dict[str, tuple[torch.nn.Module, int]]) -> dict:
    backend = make_backend(runtime, a.threads)
    backend.setup()
    names = list(models)
    runners = {n: backend.prepare(models[n][0], torch.randn(1, 3, models[n][1], models[n][1])) for n in names}
    per_pass: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    rng = random.Random(0)
    for _ in range(a.passes):
        for n, st in zip(names, measure_interleaved(names, runners.__getitem__, backend, MeasureConfig(), rng)):
            per_pass[n].append(st)
    return {n: combine_passes(per_pass[n], whole=True)["ms"] for n in names}


def runtime_lut(a: argparse.Namespace, runtime: str, space_name: str) -> Path:
    """--lut RUNTIME=PATH, else a LUT of the supernet's space built on `runtime` into --work (once)."""
    if runtime in a.luts:
        return Path(a.luts[runtime])
    from nas import api

    path = Path(a.work) / "luts" / f"{runtime}.csv"
    if not path.is_file():
        api.build_lut(path, space=space_name, backend=runtime, threads=a.threads)
    return path


def search(a: argparse.Namespace, net: SuperNet, runtime: str, zoo_ms: dict[str, float]) -> dict[float, ArchSpec]:
    """One slimming trajectory of the supernet `net` on `runtime`'s LUT to targets spread over the zoo's latencies
    there."""
    from nas import api
    from nas.search.bounds import min_latency
    from nas.search.slimming import SlimConfig

    lut = runtime_lut(a, runtime, net.space.name)
    table = LatencyTable.load(lut)
    start = table.predict(net.spec_of(net.derive()))
    floor, _ = min_latency(net, table, SlimConfig.width_step)
    lats = sorted(v for v in zoo_ms.values() if v < start) or [start]
    # below the space's floor no target is reachable: the lowest target stays 10% above it
    lo, hi = max(min(lats), 1.1 * floor), max(max(lats), 1.1 * floor)
    targets = sorted({round(math.exp(x), 4) for x in np.linspace(math.log(lo), math.log(hi), a.targets)}, reverse=True)
    found = api.slim(
        a.supernet, lut, targets, Path(a.work) / "slim" / runtime, val_images=a.val_images, bn_batches=2, overwrite=True
    )  # the benchmark's own folder: a rerun re-places the targets on its new timings
    print(f"{runtime}: LUT {lut}, start {start:.3f} ms, floor {floor:.3f} ms; targets {targets}", flush=True)
    return {r["target"]: r["spec"] for r in found.rows}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a = parse_args(argv)
    setup_logging(logging.WARNING)
    t0 = time.time()
    from nas import api
    from nas.data import build_datasets

    net = api.load_supernet(a.supernet)
    size = net.space.input_size  # ours are searched at it; every model runs at it
    classes = build_datasets(compose("train", ["arch=l1", f"data={a.data}"], TrainModelConfig).data).num_classes
    torch.manual_seed(0)
    zoo = {n: (deploy_form(zoo_model(n, classes, size)), size) for n in a.zoo}
    rows: list[dict[str, Any]] = []
    # the zoo's latencies on each runtime place that runtime's targets; the search then runs on its LUT
    ours = {runtime: search(a, net, runtime, time_models(a, runtime, zoo, "zoo")) for runtime in a.runtimes}
    all_ours = {f"ours {t:g} ms ({r} LUT)": s for r, found in ours.items() for t, s in found.items()}
    # the reported latencies: every model, zoo and ours (found on any runtime's LUT), side by side in one run
    models = {**zoo, **{n: (build_model(s).eval().fuse(), s.input_size) for n, s in all_ours.items()}}
    timings = {runtime: time_models(a, runtime, models, "all") for runtime in a.runtimes}
    budget = {"timing and search": time.time() - t0}
    t1 = time.time()
    near = [n for n in a.zoo if any(timings[r][n] <= a.near * max(ours[r]) for r in a.runtimes)]
    far = [n for n in a.zoo if n not in near]
    skipped = [n for n in near if n in a.skip_train]
    near = [n for n in near if n not in skipped]
    print(f"zoo models trained (near a target): {near}; timed only (slower): {far}; skipped: {skipped}", flush=True)
    # every model's learning rate is chosen alike (ours too, unless --no-sweep-ours): a sweep at the first seed
    swept = [*(all_ours if a.sweep_ours else []), *near]
    with pool(a.jobs) as ex:

        def job(name: str, seed: int, factor: float) -> tuple:
            if name in all_ours:
                return train_ours, a, json.dumps(all_ours[name].to_dict()), seed, factor
            return train_zoo, a, name, seed, factor, size

        submit = once(ex, job)
        for name in all_ours:  # ours at the recipe's own rate, every seed
            for seed in a.seeds:
                submit(name, seed, 1.0)
        best = choose_rates(a, swept, submit)
        for name in [*all_ours, *near]:
            ourselves = name in all_ours
            row = {"model": name, "family": "ours" if ourselves else family(name)}
            row["arch"] = all_ours[name].describe() if ourselves else name
            # same recipe: ours at every seed, a zoo model at the first (its sweep's x1 run)
            same_seeds = a.seeds if ourselves else a.seeds[:1] if 1.0 in a.lr_factors else []
            for seed in same_seeds:
                m = submit(name, seed, 1.0).result()
                rows.append({**row, "recipe": "same", "lr_factor": 1.0, "seed": seed, "test_top1": m["test_top1"]})
            for seed in a.seeds if name in best else []:
                m = submit(name, seed, best[name]).result()
                rows.append(
                    {
                        **row,
                        "recipe": "best of sweep",
                        "lr_factor": best[name],
                        "seed": seed,
                        "test_top1": m["test_top1"],
                    }
                )
    budget["training"] = time.time() - t1
    df = pd.DataFrame(rows)
    for runtime in a.runtimes:
        df[f"{runtime}_ms"] = df["model"].map(timings[runtime])
    prefix = Path(a.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_suffix(".csv"), df.to_csv(index=False))
    timed = pd.DataFrame(
        [
            {"model": n, "family": family(n), "why": why, **{f"{r}_ms": timings[r][n] for r in a.runtimes}}
            for names, why in (
                (far, "slower than every target"),
                (skipped, "near a target, skipped by --skip-train"),
            )
            for n in names
        ]
    )
    if len(timed):
        atomic_write_text(prefix.parent / f"{prefix.name}_timed_only.csv", timed.to_csv(index=False))
    text = report(df, a, ours, timed)
    if a.long_epochs:
        t2 = time.time()
        text += "\n\n" + long_check(a, df, ours, all_ours, size)
        budget["longer recipe"] = time.time() - t2
    text += "\nbudget: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in budget.items())
    atomic_write_text(prefix.with_suffix(".txt"), text + "\n")
    print(text)
    plot(df, a, prefix.with_suffix(".png"))
    return df


def once(ex, job):
    """`submit(name, seed, factor)` for the executor `ex`: runs `job(name, seed, factor)` (a function and its
    arguments) and returns its future; a run already submitted is not submitted twice (two would share a folder)."""
    futures: dict[tuple[str, int, float], Any] = {}

    def submit(name: str, seed: int, factor: float):
        if (name, seed, factor) not in futures:
            fn, *args = job(name, seed, factor)
            futures[name, seed, factor] = ex.submit(fn, *args)
        return futures[name, seed, factor]

    return submit


def choose_rates(a: argparse.Namespace, swept: list[str], submit) -> dict[str, float]:
    """Each model's rate: the best held-out top-1 of its sweep at the first seed; while that best is the sweep's
    largest rate, twice it is tried too (at most --lr-extend times). The chosen rate is then submitted at every
    seed. Models are decided as their runs finish, so one model's extension does not hold up the others'."""
    from concurrent.futures import FIRST_COMPLETED, wait

    runs = {n: {f: submit(n, a.seeds[0], f) for f in a.lr_factors} for n in swept}
    best: dict[str, float] = {}
    while len(best) < len(swept):
        for n in swept:
            if n in best or not all(job.done() for job in runs[n].values()):
                continue
            sweep = {f: job.result() for f, job in runs[n].items()}
            top, chosen = max(sweep), max(sweep, key=lambda f: sweep[f]["val_top1"])
            if chosen == top and len(sweep) < len(set(a.lr_factors)) + a.lr_extend:
                runs[n][2 * top] = submit(n, a.seeds[0], 2 * top)  # at the sweep's edge: it may want a larger one
                continue
            best[n] = chosen
            print(f"{n}: sweep val top-1 { ({f: round(m['val_top1'], 4) for f, m in sweep.items()}) }", flush=True)
            for seed in a.seeds:
                submit(n, seed, chosen)
        waiting = [job for n in swept if n not in best for job in runs[n].values() if not job.done()]
        if waiting:
            wait(waiting, return_when=FIRST_COMPLETED)
    return best


def long_check(
    a: argparse.Namespace,
    df: pd.DataFrame,
    ours: dict[str, dict[float, ArchSpec]],
    specs: dict[str, ArchSpec],
    size: int,
) -> str:
    """Does the lead of the short recipe hold with a longer one? At the first runtime's largest and smallest
    comparison latency (`levels`), the best model of each side at or under it (as the report pairs them) retrained
    for --long-epochs epochs at the first seed, the zoo model at its chosen rate, each in --work/long."""
    import copy

    runtime, seed = a.runtimes[0], a.seeds[0]
    longer = copy.copy(a)
    longer.recipe = [*a.recipe, f"train.epochs={a.long_epochs}"]
    longer.work = str(Path(a.work) / "long")
    m = per_model(df, runtime)
    lines = [f"[{runtime}] longer recipe ({a.long_epochs} epochs, seed {seed}; otherwise as above):"]
    at = levels(m, ours[runtime])
    for t in sorted({at[0], at[-1]}, reverse=True):
        bm, bt = best_at(m, runtime, t)
        if bm is None or bt is None:
            lines.append(f"  L={t:g} ms: one side has no model at or under L")
            continue
        with pool(a.jobs) as ex:
            job_mine = ex.submit(train_ours, longer, json.dumps(specs[bm["model"]].to_dict()), seed, float(bm["lr"]))
            job_theirs = ex.submit(train_zoo, longer, bt["model"], seed, float(bt["lr"]), size)
            acc_mine, acc_theirs = job_mine.result()["test_top1"], job_theirs.result()["test_top1"]
        lines.append(
            f"  L={t:g} ms: ours {bm['model']} lr x{bm['lr']:g} {acc_mine * 100:.2f} "
            f"(short recipe {bm['mean'] * 100:.2f}) | "
            f"zoo {bt['model']} lr x{bt['lr']:g} {acc_theirs * 100:.2f} (short recipe {bt['mean'] * 100:.2f})  "
            f"lead {(acc_mine - acc_theirs) * 100:+.2f} (short recipe {(bm['mean'] - bt['mean']) * 100:+.2f})"
        )
    return "\n".join(lines)


class _Serial:
    """ProcessPoolExecutor's submit/result for --jobs 1: each job runs when submitted, in this process."""

    class _Done:
        def __init__(self, value: Any):
            self.value = value

        def result(self) -> Any:
            return self.value

        def done(self) -> bool:
            return True

    def submit(self, fn, *args):
        return self._Done(fn(*args))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def pool(jobs: int):
    """--jobs training runs at once: worker processes (spawned, so no thread pool is forked), or this process."""
    if jobs <= 1:
        return _Serial()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def per_model(df: pd.DataFrame, runtime: str) -> pd.DataFrame:
    """One row per model: mean, SE over seeds and latency on `runtime`; a zoo model's better recipe."""
    g = (
        df.groupby(["model", "recipe"])
        .agg(
            mean=("test_top1", "mean"),
            sd=("test_top1", "std"),
            n=("test_top1", "size"),
            ms=(f"{runtime}_ms", "first"),
            family=("family", "first"),
            lr=("lr_factor", "first"),
        )
        .reset_index()
    )
    g["se"] = (g["sd"].fillna(0) / np.sqrt(g["n"])).astype(float)
    # a model's best of sweep (the rate chosen on held-out images, every seed) where it was swept, else its x1 runs
    swept = set(g.loc[g["recipe"] == "best of sweep", "model"])
    best = g[(g["recipe"] == "best of sweep") | ~g["model"].isin(swept)].copy()
    same = g[g["recipe"] == "same"].set_index("model")["mean"]
    best["same_recipe"] = best["model"].map(same)
    return best.reset_index(drop=True)


def best_at(
    m: pd.DataFrame, runtime: str, t: float, any_lut: bool = False
) -> tuple[pd.Series | None, pd.Series | None]:
    """The best model (mean top-1) measuring at or under `t` on `runtime`: ours (found on this runtime's LUT, or
    on any runtime's with `any_lut`), and the zoo's; None where a side has none."""
    own = m["model"].str.endswith(f"({runtime} LUT)") | any_lut
    mine = m[(m["family"] == "ours") & own & (m["ms"] <= t)]
    theirs = m[(m["family"] != "ours") & (m["ms"] <= t)]
    best = [sub.loc[sub["mean"].idxmax()] if len(sub) else None for sub in (mine, theirs)]
    return best[0], best[1]


def levels(m: pd.DataFrame, targets: dict[float, ArchSpec]) -> list[float]:
    """The latencies L a runtime's comparison is made at, largest first: its targets and, where the zoo is slower
    than all of them (torch eager), the four fastest trained zoo models' latencies too."""
    zoo_ms = sorted(m.loc[m["family"] != "ours", "ms"])
    extra = [math.ceil(x * 1e4) / 1e4 for x in zoo_ms[:4]] if zoo_ms and zoo_ms[0] > max(targets) else []
    return sorted({*extra, *targets}, reverse=True)


def report(df: pd.DataFrame, a: argparse.Namespace, ours: dict[str, dict[float, ArchSpec]], timed: pd.DataFrame) -> str:
    lines = [
        f"Test top-1 (%) at equal measured latency; data {a.data}, recipe {' '.join(a.recipe)}, seeds {a.seeds}; "
        f"{'every model' if a.sweep_ours else 'zoo'}: best of sweep (lr x {a.lr_factors} at the first seed, doubled "
        f"up to {a.lr_extend} more times while the largest is best, chosen on held-out images, then every seed), "
        "and in brackets its x1 run(s), the recipe's own rate; "
        f"{a.threads} thread(s), batch 1; torch {torch.__version__}"
    ]
    for runtime in a.runtimes:
        m = per_model(df, runtime)
        lines += ["", f"[{runtime}] every model (ms measured on {runtime}):"]
        for r in m.sort_values("ms").itertuples():
            extra = f" (at x1: {r.same_recipe * 100:.2f})" if r.recipe == "best of sweep" else ""
            lines.append(f"  {r.model:<34}{r.ms:>8.3f} ms  {r.mean * 100:6.2f} ± {r.se * 100:.2f}  lr x{r.lr:g}{extra}")
        for r in timed.sort_values(f"{runtime}_ms").itertuples() if len(timed) else []:
            lines.append(f"  {r.model:<34}{getattr(r, f'{runtime}_ms'):>8.3f} ms  not trained ({r.why})")
        lines.append(
            f"[{runtime}] at each target L (and the fastest zoo latencies where the zoo is slower than every target): "
            "best at or under L, ours (found on this runtime's LUT) vs zoo"
        )
        for t in levels(m, ours[runtime]):
            bm, bt = best_at(m, runtime, t)
            cells = [_cell(b) for b in (bm, bt)]
            lines.append(f"  L={t:g} ms: ours {cells[0]} | zoo {cells[1]}{_lead(bm, bt)}")
            other, _ = best_at(m, runtime, t, any_lut=True)
            if other is not None and (bm is None or other["mean"] > bm["mean"]):
                # a model found on another runtime's LUT can beat ours from this LUT here: shown, not counted above
                lines.append(f"    ours found on any runtime's LUT: {_cell(other)}{_lead(other, bt)}")
    return "\n".join(lines)


def _cell(b: pd.Series | None) -> str:
    return (
        "none at or under L"
        if b is None
        else f"{b['model']} {b['ms']:.3f} ms {b['mean'] * 100:.2f} ± {b['se'] * 100:.2f}"
    )


def _lead(mine: pd.Series | None, theirs: pd.Series | None) -> str:
    """Ours minus theirs in points, ± the two standard errors in quadrature; empty where a side has no model."""
    if mine is None or theirs is None:
        return ""
    return f"  lead {(mine['mean'] - theirs['mean']) * 100:+.2f} ± {math.hypot(mine['se'], theirs['se']) * 100:.2f}"


def pareto(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats in both latency (lower) and accuracy (higher), by latency."""
    pts = points.sort_values(["ms", "mean"], ascending=[True, False])
    keep, best = [], -1.0
    for i, r in pts.iterrows():
        if r["mean"] > best:
            keep.append(i)
            best = r["mean"]
    return pts.loc[keep]


def plot(df: pd.DataFrame, a: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas.plots import save_figure

    fig, axes = plt.subplots(1, len(a.runtimes), figsize=(6.5 * len(a.runtimes), 4.8), squeeze=False)
    for ax, runtime in zip(axes[0], a.runtimes):
        m = per_model(df, runtime)
        m = m[~((m["family"] == "ours") & ~m["model"].str.endswith(f"({runtime} LUT)"))]
        for k, (fam, sub) in enumerate(m.groupby("family")):
            colour, marker = (
                ("C3", "*") if fam == "ours" else (f"C{[0, 1, 2, 4, 5, 6, 7, 8, 9][k % 9]}", "o")
            )  # C3: ours
            size = 13 if fam == "ours" else 6
            label = f"ours (searched on the {runtime} LUT)" if fam == "ours" else fam
            ax.errorbar(
                sub["ms"],
                sub["mean"] * 100,
                yerr=sub["se"] * 100,
                fmt=marker,
                color=colour,
                ms=size,
                capsize=2,
                label=label,
            )
            front = pareto(sub)
            ax.plot(front["ms"], front["mean"] * 100, "-", color=colour, lw=1.5 if fam == "ours" else 0.8)
        ax.set_xscale("log")
        ax.set(
            xlabel=f"measured latency (ms, {runtime}, {a.threads} thread, batch 1)",
            ylabel="test top-1 (%)",
            title=f"{runtime}: searched vs timm's zoo ({a.data})",
        )
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
