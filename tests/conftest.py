import pytest
import torch

from supernet.arch import ArchSpec, StageSpec


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


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
    from tests.helpers import SMALL_TRAINING as SMALL

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
