"""Supernet training-step cost relative to a standalone network of its largest path.

    python benchmarks/supernet_step.py                      # space=tiny, batch 64, 2 threads
    python benchmarks/supernet_step.py --batch 128 --rounds 20
    python benchmarks/supernet_step.py --space l7 --device cuda     # 224 px, batch 64, with peak GPU memory
    python benchmarks/supernet_step.py --amp                # each contender also under bf16 autocast (train.amp)
    python benchmarks/supernet_step.py --amp --channels-last        # ... and each of those also in NHWC
    python benchmarks/supernet_step.py --width-sampling     # add the hard supernet with supernet.width_sampling

Every contender does a full training step (forward, cross-entropy, backward, AdamW step) on the same batch.
They are timed side by side in one process: after warm-up, each round runs every contender `--per-round`
times in a freshly shuffled order, and the median over all rounds is reported with the p25-p75 spread.
Ratios are medians divided by the standalone all-MB4D network's median. On CUDA each step ends with a
synchronisation (so the wall time is the GPU's), and the peak memory of each contender's steps is reported
(torch.cuda.max_memory_allocated, reset before each contender's first timed step).
Contenders: the supernet in soft mode (every branch of every MetaPath runs), in hard mode (straight-through
Gumbel: one branch per MetaPath), and standalone `build_model` networks of the two largest paths (every
MetaPath MB4D; and stages 3-4 all MB3D). With `--amp`, each contender also runs as a copy under bf16 autocast
(what `train.amp=bf16` does), in the same shuffled rounds. With `--channels-last`, every contender also runs as a copy
whose weights and batch are in NHWC (`train.channels_last=true`); with both flags, also bf16 and NHWC together.
With `--width-sampling`, the hard supernet also runs as `supernet.width_sampling=true` trains it: the full network
and the network narrowed to widths drawn per stage from the 16-channel grid, both through backward (the logits are
summed; the trainer sums the two losses, which costs the same).
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.config import compose  # noqa: E402
from nas.train_supernet import TrainSupernetConfig  # noqa: E402
from supernet import build_model  # noqa: E402
from supernet.supernet import SuperNet  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--per-round", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", action="store_true", help="add a bf16-autocast copy of every contender")
    p.add_argument(
        "--channels-last", action="store_true", help="add an NHWC copy of every contender (and of its bf16 copy)"
    )
    p.add_argument("--width-sampling", action="store_true", help="add the hard supernet with width sampling")
    return p.parse_args()


class WidthSampled(nn.Module):
    """The hard supernet as `supernet.width_sampling=true` runs it: the full network plus one narrowed network."""

    def __init__(self, net: SuperNet, step: int = 16):
        super().__init__()
        self.net, self.step = net, step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.net(x, widths=self.net.sample_widths(self.step))


def contenders(space, width_sampling: bool = False) -> dict[str, nn.Module]:
    """The supernet in soft and hard mode, and two standalone networks of the same space for scale."""
    soft = SuperNet(space, num_classes=10, hard=False)
    all3d = tuple(("3d" if "3d" in soft.stage_choices[i] else "4d",) * d for i, d in enumerate(space.depths))
    out = {
        "supernet soft": soft,
        "supernet hard": SuperNet(space, num_classes=10, hard=True),
        "standalone all-MB4D": build_model(space.max_spec(10)),
        "standalone MB3D in stages 3-4": build_model(soft.spec_of(all3d)),
    }
    if width_sampling:
        out["supernet hard, width-sampled"] = WidthSampled(SuperNet(space, num_classes=10, hard=True))
    return out


def variant(name: str) -> str:
    """The part of a contender's name in brackets: "bf16", "channels-last", "bf16, channels-last" or ""."""
    return name[name.index("(") + 1 : -1] if name.endswith(")") else ""


class Stepper:
    """One timed training step (forward, backward, AdamW) of each contender on a fixed batch."""

    def __init__(self, models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor):
        self.models, self.x, self.y = models, x, y
        self.bf16 = {k: "bf16" in variant(k) for k in models}
        self.nhwc = {k: "channels-last" in variant(k) for k in models}
        self.x_nhwc = x.contiguous(memory_format=torch.channels_last)
        self.opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
        self.cuda = x.device.type == "cuda"

    def __call__(self, name: str) -> float:
        m, opt = self.models[name], self.opts[name]
        m.train()
        t0 = time.perf_counter()
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16[name]):
            loss = F.cross_entropy(m(self.x_nhwc if self.nhwc[name] else self.x), self.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    def peak_gib(self, name: str) -> float:
        """Peak memory of a training step of this contender alone."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self(name)
        return torch.cuda.max_memory_allocated() / 2**30


def interleaved(step: Stepper, rounds: int, per_round: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in step.models}
    rng, order = random.Random(0), list(step.models)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name] += [step(name) for _ in range(per_round)]
    return times


def main() -> None:
    a = parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    space = compose("train_supernet", [f"space={a.space}"], TrainSupernetConfig).space
    models = {k: m.to(dev) for k, m in contenders(space, a.width_sampling).items()}
    base = dict(models)
    if a.amp:
        models.update({f"{k} (bf16)": copy.deepcopy(m) for k, m in base.items()})
    if a.channels_last:
        tags = ["channels-last"] + (["bf16, channels-last"] if a.amp else [])
        for tag in tags:
            models.update(
                {f"{k} ({tag})": copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in base.items()}
            )
    x = torch.randn(a.batch, 3, space.input_size, space.input_size, device=dev)
    step = Stepper(models, x, torch.randint(0, 10, (a.batch,), device=dev))
    for name in models:
        for _ in range(a.warmup):
            step(name)
    peak = {name: step.peak_gib(name) for name in models} if step.cuda else {}
    times = interleaved(step, a.rounds, a.per_round)
    base = float(np.median(times["standalone all-MB4D"]))
    where = torch.cuda.get_device_name(dev) if step.cuda else f"cpu, threads={a.threads}"
    print(
        f"space={space.name} input={space.input_size}px batch={a.batch} on {where} "
        f"({a.rounds} shuffled rounds x {a.per_round} steps; torch {torch.__version__})"
    )
    print(f"{'contender':<52}{'median ms':>11}{'p25-p75 ms':>17}{'ratio':>8}" + (f"{'peak GiB':>10}" if peak else ""))
    for name, t in times.items():
        med, p25, p75 = np.median(t), np.percentile(t, 25), np.percentile(t, 75)
        mem = f"{peak[name]:>10.2f}" if peak else ""
        print(f"{name:<52}{med:>11.1f}{f'{p25:.1f}-{p75:.1f}':>17}{med / base:>8.2f}{mem}")


if __name__ == "__main__":
    main()
