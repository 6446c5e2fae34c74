"""Shared test building blocks (test files import only from here, never from each other): small spaces and
training settings, fast measurement settings, LUTs with hand-set rows (row i costs exactly i + 1 ms, so any sum
is checkable by hand), the slim config of the end-to-end tests, torchrun, and randomised weights."""

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from latency_lut.measure import space_rows
from latency_lut.table import COLUMNS, LatencyTable, Row, encode_fingerprint, encode_stages, fingerprint
from nas.build_lut import BuildLUTConfig
from nas.config import compose
from nas.slim import SlimConfig
from supernet.arch import ArchSpec, AttentionSpec
from supernet.space import SpaceConfig

SMALL_SPACE = [
    "space.depths=[1,1,2,2]",
    "space.widths=[16,16,32,32]",
    "space.input_size=32",
    "space.attention.key_dim=8",
    "space.attention.num_heads=2",
]
FAST = [
    "measure.warmup=1",
    "measure.rounds=2",
    "measure.runs_per_round=2",
    "measure.interleave=4",
    "measure.passes=2",
    "measure.gate_wait_s=0",  # the host gate re-measures slow passes at once (no pause)
    "calibration_networks=4",
]


def fake_table(rows: list[Row], **meta) -> pd.DataFrame:
    """A LUT whose row i costs exactly i + 1 ms (so any sum is checkable by hand)."""
    m = {
        "backend": "torch",
        "device": "test",
        "versions": "torch=x",
        "threads": 1,
        "batch": 1,
        "input_size": 32,
        **meta,
    }
    return pd.DataFrame(
        [
            {
                "kind": r.kind,
                "stage": r.stage,
                "in_width": r.in_width,
                "width": r.width,
                "resolution": r.resolution,
                "ms": i + 1.0,
                "p25_ms": i + 0.5,
                "p75_ms": i + 1.5,
                "runs": 10,
                **m,
            }
            for i, r in enumerate(rows)
        ]
    )[COLUMNS]


def small_space():
    return compose("build_lut", SMALL_SPACE, BuildLUTConfig).space


def table_with_networks(
    specs: Sequence[ArchSpec], measured: Callable[[float], float], visits: Sequence[float] = (1.0,), call: float = 0.0
) -> tuple[LatencyTable, list[ArchSpec]]:
    """The fake table of `small_space()` with a `call` row and `specs` as calibration networks: network k on visit
    v measures `measured(raw_k) * visits[v]`, raw_k being its rows' sum plus the call."""
    space = small_space()
    fp = encode_fingerprint(fingerprint(space.max_spec(10), 16))
    df = fake_table(space_rows(space, 10)).assign(fingerprint=fp, arch="")
    plain = LatencyTable(df)
    extra = [dict(df.iloc[0], kind="call", stage=0, in_width=0, width=0, resolution=0, ms=call)]
    for k, s in enumerate(specs):
        ms = measured(plain.raw(s) + call)
        for v, f in enumerate(visits):
            extra.append(dict(df.iloc[0], kind="net", stage=3, in_width=k, width=v, ms=ms * f, arch=encode_stages(s)))
    return LatencyTable(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)), list(specs)


SMALL_TRAINING = [  # nas.train_supernet / nas.train on digits, small space, 32 px
    "data=digits",
    "space.depths=[1,1,2,2]",
    "space.widths=[16,16,32,32]",
    "space.input_size=32",
    "space.attention.key_dim=8",
    "space.attention.num_heads=2",
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.threads=1",
]

SMALL_SUPERNET_SPACE = SpaceConfig(
    name="small", depths=[2, 1, 3, 2], widths=[16, 32, 48, 64], input_size=64, attention=AttentionSpec(8, 2, 2.0)
)


def slim_cfg(trained, out, targets, *extra):
    sn, lut, _ = trained
    return compose(
        "slim",
        [
            f"target_ms={targets}",
            f"supernet={sn}",
            f"lut={lut}",
            f"out={out}",
            "val_images=150",
            "bn_batches=2",
            "batch_size=64",
            "threads=1",
            *extra,
        ],
        SlimConfig,
    )


def randomize_state(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every float tensor (weights, BN running stats, LayerScale, attention biases) non-trivial values,
    so that equality checks cannot pass on zeros, ones and 1e-5 layer scales."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if v.dtype.is_floating_point:
            if "running_var" in k:
                sd[k] = torch.rand(v.shape, generator=g) + 0.5
            else:
                sd[k] = torch.randn(v.shape, generator=g) * 0.1
    model.load_state_dict(sd)


def torchrun(module: str, args: list[str], port: int) -> subprocess.CompletedProcess:
    """Run `python -m module args` as two CPU processes under torchrun (gloo), from the repository root."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", module]
    return subprocess.run(
        [*cmd, *args], cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
