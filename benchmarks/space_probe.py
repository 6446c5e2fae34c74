"""Is our search space's width what holds its models back against a zoo model (issue #24, item 5)?

`peers.py` found our models flat in accuracy across sizes, and a zoo model with twice the parameters of our largest
ahead of them. This probe takes the architectures a `peers.py` run found (its --work), widens every stage by
--widen (the stem, depths and block kinds kept), and times originals, widened ones and the --against zoo models side
by side on --runtime in one interleaved run. The widened models that measure at or under the slowest --against model
are trained with peers.py's recipe and learning-rate choice (a sweep at the first seed, chosen on held-out images,
then every seed), at most --max-train of them, the slowest first. It reports every model's measured latency, and
test top-1 (mean ± SE over seeds) where trained.

    python benchmarks/space_probe.py --work runs/bench/peers_run2 --out benchmarks/results/space_probe_run2

It is not a search: the widened models are the found ones scaled, not what a wider space's slimming would emit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from nas.search.slimming import SlimConfig  # noqa: E402
from supernet.arch import ArchSpec, StageSpec  # noqa: E402
from supernet.complexity import count_params  # noqa: E402
from supernet.files import atomic_write_text  # noqa: E402
from supernet.model import build_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="a peers.py --work folder (its found architectures, its runs)")
    p.add_argument("--out", required=True, help="prefix of the .txt/.csv written")
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--against", nargs="+", default=["efficientvit_m0"], help="zoo models timed beside them")
    p.add_argument("--widen", type=float, default=2.0, help="every stage's width x this (rounded to 16)")
    p.add_argument("--max-train", type=int, default=2)
    p.add_argument("--lr-factors", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--peers-csv", help="that run's peers CSV: the originals' and zoo models' figures, for the report")
    a = p.parse_args(argv)
    a.archs = sorted((Path(a.work) / "ours" / "archs").glob("*.yaml"))
    if a.peers_csv and not Path(a.peers_csv).is_file():
        p.error(f"--peers-csv {a.peers_csv}: no such file")
    if not a.archs:
        p.error(f"--work {a.work} holds no found architectures (ours/archs/*.yaml): run peers.py there first")
    pa = peers.parse_args(
        ["--work", a.work, "--jobs", str(a.jobs), "--lr-factors", *map(str, a.lr_factors), "--zoo", *a.against]
    )
    return a, pa


def peers_figures(csv: str | None) -> dict[str, str]:
    """A peers CSV's best-of-sweep figure per architecture (ours, keyed by describe()) and per zoo model."""
    if not csv:
        return {}
    df = pd.read_csv(csv)
    df = df[df["recipe"] == "best of sweep"]
    df["key"] = np.where(df["family"] == "ours", df["arch"], df["model"])
    df = df.drop_duplicates(["key", "seed"])  # one architecture can be found for two targets: count its runs once
    out = {}
    for key, runs in df.groupby("key"):
        acc = runs["test_top1"]
        se = acc.std() / math.sqrt(len(acc)) * 100
        out[key] = f"{acc.mean() * 100:6.2f} ± {se:.2f} lr x{runs['lr_factor'].iloc[0]:g}"
    return out


def widened(spec: ArchSpec, k: float) -> ArchSpec:
    """`spec` with every stage's width x k, rounded to the slimmer's width step (16 channels)."""
    step = SlimConfig.width_step
    return spec.replace(stages=tuple(StageSpec(int(step * round(s.width * k / step)), s.blocks) for s in spec.stages))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    a, pa = parse_args(argv)
    originals = {f"ours {p.stem}": ArchSpec.load(p) for p in a.archs}
    wide = {f"{n} x{a.widen:g} wide": widened(s, a.widen) for n, s in originals.items()}
    ours = {**originals, **wide}
    size = next(iter(originals.values())).input_size
    classes = next(iter(originals.values())).num_classes
    torch.manual_seed(0)
    models = {n: (build_model(s).eval().fuse(), size) for n, s in ours.items()}
    models.update({n: (peers.deploy_form(peers.zoo_model(n, classes, size)), size) for n in a.against})
    ms = peers.time_models(pa, a.runtime, models, f"probe_x{a.widen:g}")
    limit = max(ms[n] for n in a.against)
    under = sorted((n for n in wide if ms[n] <= limit), key=ms.get, reverse=True)[: a.max_train]
    print(f"at or under {limit:.3f} ms ({a.runtime}): {under}", flush=True)
    specs = {n: json.dumps(wide[n].to_dict()) for n in under}
    rows = []
    with peers.pool(a.jobs) as ex:
        submit = peers.once(ex, lambda name, seed, factor: (peers.train_ours, pa, specs[name], seed, factor))
        best = peers.choose_rates(pa, under, submit)
        for n in under:
            for seed in pa.seeds:
                m = submit(n, seed, best[n]).result()
                rows.append({"model": n, "lr_factor": best[n], "seed": seed, "test_top1": m["test_top1"]})
    df = pd.DataFrame(rows, columns=["model", "lr_factor", "seed", "test_top1"])
    df[f"{a.runtime}_ms"] = df["model"].map(ms)
    prefix = Path(a.out)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prefix.with_suffix(".csv"), df.to_csv(index=False))
    earlier = peers_figures(a.peers_csv)
    lines = [
        f"{a.runtime}, 1 thread, batch 1, {size} px, measured side by side; widths x{a.widen:g}; recipe "
        f"{' '.join(pa.recipe)}, seeds {pa.seeds}; test top-1 mean ± SE (*: from {a.peers_csv}, its own run)"
    ]
    for n in sorted(ms, key=ms.get):
        key = ours[n].describe() if n in ours else n  # peers_figures' key: ours by architecture, the zoo by name
        params = count_params(models[n][0]) / 1e6
        acc = df[df["model"] == n]["test_top1"]
        if len(acc):
            fig = f"{acc.mean() * 100:6.2f} ± {acc.std() / math.sqrt(len(acc)) * 100:.2f} lr x{best[n]:g} "
        elif key in earlier:
            fig = earlier[key] + "*"
        else:
            fig = f"{'not trained':<22}"
        lines.append(f"  {n:<34}{ms[n]:>7.3f} ms {params:6.2f}M  {fig}  {key if n in ours else 'zoo'}")
    text = "\n".join(lines)
    atomic_write_text(prefix.with_suffix(".txt"), text + "\n")
    print(text)
    return df


if __name__ == "__main__":
    main()
