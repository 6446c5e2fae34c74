import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supernet.arch import ArchSpec, StageSpec


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


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


@pytest.fixture
def tiny_spec() -> ArchSpec:
    """A small spec with MB3D in both stage 3 (so a 3D->4D reshape) and stage 4, at 64 px."""
    return ArchSpec(
        stages=(
            StageSpec(16, ("4d",)),
            StageSpec(32, ("4d", "4d")),
            StageSpec(48, ("4d", "3d")),
            StageSpec(64, ("3d", "3d")),
        ),
        input_size=64,
        num_classes=10,
        attention={"key_dim": 8, "num_heads": 2, "attn_ratio": 2},
    ).validate()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small supernet trained on digits, and a torch LUT covering its space (shared by the slim, train and
    export tests)."""
    from latency_lut.table import LatencyTable
    from nas.build_lut import BuildLUTConfig
    from nas.build_lut import run as build_lut
    from nas.config import compose
    from nas.train_supernet import TrainSupernetConfig
    from nas.train_supernet import run as train_supernet
    from tests.helpers import FAST, SMALL_SPACE
    from tests.test_train_supernet import SMALL

    root = tmp_path_factory.mktemp("slim")
    sn = train_supernet(
        compose("train_supernet", [*SMALL, "train.epochs=2", f"out={root / 'sn'}"], TrainSupernetConfig)
    )
    lut = root / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}"], BuildLUTConfig))
    from nas.search.loading import load_supernet

    net, _ = load_supernet(sn / "supernet.pt")
    start_ms = LatencyTable.load(lut).predict(net.spec_of(net.derive()))
    return sn / "supernet.pt", lut, start_ms


def torchrun(module: str, args: list[str], port: int) -> subprocess.CompletedProcess:
    """Run `python -m module args` as two CPU processes under torchrun (gloo), from the repository root."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m", module]
    return subprocess.run(
        [*cmd, *args], cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
