"""The l7 path end to end on a GPU, in one prepared script (issue #23): generated imagefolder data, the supernet for a
few hundred steps at 224 px, a CUDA-graph LUT, slimming on the GPU to two targets, a few training steps of the
winner, and its export. Each step's wall time and peak memory are reported.

    python benchmarks/l7_gpu.py                 # on a machine with a GPU: space l7, 224 px, everything on cuda
    python benchmarks/l7_gpu.py --small         # the same steps at CPU scale (space tiny, 64 px, torch LUT, cpu)

Steps (every one through the Python API, `nas.api`, as a user would call it):
  1. data      --images-per-class random images per class (10 classes, a class-dependent colour and stripe, so the
               supernet has something to learn) written as an imagefolder (train/ and val/), PNG.
  2. supernet  `train_supernet` for about --steps steps (whole epochs over the generated images), train.amp=auto
               (bf16 on CUDA), the default supernet mode.
  3. LUT       `build_lut` on --backend (cuda: captured CUDA graphs) at batch --lut-batch, rounds stopped once
               settled (benchmarks/l7_cpu.py's adaptive settings).
  4. slim      `slim` to two targets (--fractions of the start's predicted latency) with device=--device; the time
               per evaluation is the slimming wall time over its evaluations.
  5. train     the smaller target's winner for --train-steps steps.
  6. export    its ONNX, checked against torch.
Peak memory: CUDA's max allocated per step (reset before each), and the process's peak RSS so far. Appended to
benchmarks/results/l7_gpu.txt (--small: l7_gpu_small.txt). Outputs under --work (removed first: every run fresh).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from l7_cpu import peak_rss_gib  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ADAPTIVE = {"min_rounds": 4, "settle_pct": 1.0, "passes": 1}  # as benchmarks/l7_cpu.py builds its l7 LUT
CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU scale: space tiny, 64 px, torch LUT, device cpu")
    p.add_argument("--space", default=None, help="default: l7 (tiny with --small)")
    p.add_argument("--size", type=int, default=None, help="input size; default 224 (64 with --small)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --small)")
    p.add_argument("--backend", default=None, help="LUT backend; default cuda (torch with --small)")
    p.add_argument("--images-per-class", type=int, default=None, help="default 192 (8 with --small)")
    p.add_argument("--batch", type=int, default=None, help="training batch; default 64 (16 with --small)")
    p.add_argument("--steps", type=int, default=None, help="supernet steps, rounded up to whole epochs; default 300")
    p.add_argument("--lut-batch", type=int, default=1)
    p.add_argument("--fractions", nargs=2, type=float, default=[0.8, 0.6], help="targets / start latency")
    p.add_argument("--val-images", type=int, default=None, help="slimming's scoring images; default 320 (40)")
    p.add_argument("--train-steps", type=int, default=None, help="winner's training steps; default 50 (4)")
    p.add_argument("--work", default="runs/bench/l7_gpu")
    p.add_argument("--out", default=None, help="results file; default benchmarks/results/l7_gpu[_small].txt")
    a = p.parse_args(argv)
    small = a.small
    for key, big, little in [
        ("space", "l7", "tiny"),
        ("size", 224, 64),
        ("device", "cuda", "cpu"),
        ("backend", "cuda", "torch"),
        ("images_per_class", 192, 8),
        ("batch", 64, 16),
        ("steps", 300, 8),
        ("val_images", 320, 40),
        ("train_steps", 50, 4),
    ]:
        if getattr(a, key) is None:
            setattr(a, key, little if small else big)
    a.out = Path(a.out or RESULTS / f"l7_gpu{'_small' if small else ''}.txt")
    return a


def write_images(root: Path, per_class: int, val_per_class: int, size: int, seed: int = 0) -> None:
    """An imagefolder of random images: class k is tinted by its own colour and carries stripes of its own period."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (CLASSES, 3))
    yy = np.arange(size)[:, None, None]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k in range(CLASSES):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            stripes = 40 * np.sin(2 * np.pi * yy * (k + 2) / size)
            for i in range(n):
                img = 0.5 * colours[k] + stripes + rng.normal(0, 50, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


class Steps:
    """Runs each step, recording its wall time and peak memory."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.rows: list[dict[str, Any]] = []

    def __call__(self, name: str, fn: Callable[[], Any], note: Callable[[Any], str] = lambda r: "") -> Any:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        result = fn()
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.time() - t0
        row = {
            "step": name,
            "wall_s": round(wall, 1),
            "cuda_peak_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None,
            "peak_rss_GiB": round(peak_rss_gib(), 2),
            "note": note(result),
        }
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return result


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from nas import api

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    steps = Steps(a.device)
    val_per_class = max(2, a.images_per_class // 8)
    steps("data", lambda: write_images(work / "images", a.images_per_class, val_per_class, a.size))
    data = {"data": "imagefolder", "data.root": str(work / "images"), "data.input_size": a.size}
    data["data.val_size"] = CLASSES * val_per_class  # the supernet's own held-out split: slimming scores on it
    # the imagefolder's val/ split is the test split; the held-out split comes from train/
    images = CLASSES * a.images_per_class - data["data.val_size"]  # training images
    per_epoch = max(1, images // a.batch)
    epochs = max(1, math.ceil(a.steps / per_epoch))
    recipe = {"batch_size": a.batch, "epochs": epochs, "warmup_epochs": 0, "device": a.device, "eval_batch_size": 64}
    over = [f"{k}={v}" for k, v in data.items()]
    size = [f"space.input_size={a.size}"]
    sn = steps(
        "train_supernet",
        lambda: api.train_supernet(work / "supernet", [*over, *size], space=a.space, train=recipe),
        lambda r: f"{epochs} epochs x {per_epoch} steps, batch {a.batch}",
    )
    lut_opts = {"space": a.space, "backend": a.backend, "batch": a.lut_batch}
    measure = ADAPTIVE if not a.small else {"rounds": 3, "warmup": 2, "runs_per_round": 2, "passes": 1}
    lut = steps(
        "build_lut",
        lambda: api.build_lut(work / "lut.csv", size, measure=measure, calibration_networks=6, **lut_opts),
        lambda t: f"{len(t.df)} rows, {t.describe()}",
    )
    net = api.load_supernet(sn)
    start = lut.predict(net.spec_of(net.derive()))
    targets = [round(start * f, 4) for f in a.fractions]
    found = steps(
        "slim",
        lambda: api.slim(sn, lut, targets, work / "slim", device=a.device, val_images=a.val_images, bn_batches=2),
        lambda r: (
            f"targets {targets} ms (start {start:.3f}), {r.steps} steps, {r.evaluations} evaluations, "
            f"{r.wall_s / max(r.evaluations, 1):.3f} s per evaluation on {a.device}"
        ),
    )
    arch = found.arch_paths[-1]
    train_epochs = max(1, math.ceil(a.train_steps * a.batch / images))
    winner = {**recipe, "epochs": train_epochs}
    metrics = steps(
        "train",
        lambda: api.train(arch, work / "train", over, train=winner),
        lambda m: f"{train_epochs} epoch(s), test top-1 {m['test_top1']:.3f}, {m['params_M']:.2f}M params",
    )
    steps(
        "export",
        lambda: api.export(arch, work / "export", work / "train" / "checkpoint.pt", lut=str(work / "lut.csv")),
        lambda r: f"onnx max |diff| vs torch {r.get('max_abs_diff_vs_torch', float('nan')):.2e}",
    )
    device = torch.cuda.get_device_name() if steps.cuda else "cpu"
    head = (
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')} space {a.space}, {a.size} px, device {a.device} ({device}), "
        f"LUT backend {a.backend} batch {a.lut_batch}; torch {torch.__version__}; test top-1 {metrics['test_top1']:.3f}"
    )
    lines = [head] + [json.dumps(r) for r in steps.rows]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return steps.rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from nas.config import setup_logging

    setup_logging()
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
