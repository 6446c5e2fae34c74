"""The Python API: the pipeline's steps as functions, built from the same configs and library calls as the
`python -m nas.X` commands (so their defaults are the YAML defaults, and a bad option fails the same way).

    from nas.api import build_lut, export, slim, train, train_supernet

    sn = train_supernet("runs/api/supernet", data="digits", train={"epochs": 1})   # -> supernet.pt
    lut = build_lut("runs/api/lut.csv", backend="onnxruntime")                   # -> LatencyTable
    found = slim(sn, lut, target_ms=[0.5, 0.4], out="runs/api/slim")              # -> SlimResult
    metrics = train(found.arch_paths[0], "runs/api/train", data="digits")         # -> metrics.json's dict
    report = export(found.arch_paths[0], "runs/api/export", format="onnx")       # -> export report

(The names are the commands' names: import them from `nas.api`, since `nas.slim` is the command's module.)

Options are the commands' config keys as keyword arguments: a value sets a key or picks a config group
(`data="digits"`, `space="tiny"`, `backend="onnxruntime"`), a dict sets keys inside it
(`train={"epochs": 1}` is `train.epochs=1`, `measure={"rounds": 2}`). `overrides=[...]` passes hydra overrides
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latency_lut.table import LatencyTable
from nas.config import compose
from supernet.arch import ArchSpec
from supernet.model import EfficientViT, build_model
from supernet.supernet import SuperNet

__all__ = [
    "ArchSpec",
    "EfficientViT",
    "LatencyTable",
    "SuperNet",
    "build_lut",
    "build_model",
    "export",
    "load_supernet",
    "slim",
    "train",
    "train_supernet",
]


def to_overrides(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Keyword options as hydra overrides; a dict nests.

    >>> to_overrides({"data": "digits", "train": {"epochs": 1, "lr": 0.002}, "target_ms": [1.0, 0.8]})
    ['data=digits', 'train.epochs=1', 'train.lr=0.002', 'target_ms=[1.0,0.8]']
    """
    out = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += to_overrides(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            out.append(f"{name}=[{','.join(str(v) for v in value)}]")
        elif value is None:
            out.append(f"{name}=null")
        elif isinstance(value, bool):
            out.append(f"{name}={str(value).lower()}")
        else:
            out.append(f"{name}={value}")
    return out


def _config(name: str, schema: type, options: dict[str, Any], overrides: Sequence[str]) -> Any:
    return compose(name, [*to_overrides(options), *overrides], schema)


def train_supernet(out: str | Path, overrides: Sequence[str] = (), **options: Any) -> Path:
    """Train a supernet into the folder `out` (as `python -m nas.train_supernet out=...`); returns its
    supernet.pt."""
    from nas.training.supernet_run import TrainSupernetConfig
    from nas.training.supernet_run import train_supernet as run

    return run(_config("train_supernet", TrainSupernetConfig, {**options, "out": str(out)}, overrides)) / "supernet.pt"


def load_supernet(path: str | Path) -> SuperNet:
    """A supernet.pt written by `train_supernet`, in eval mode."""
    from nas.search.loading import load_supernet as load

    return load(Path(path))[0]


def build_lut(out: str | Path, overrides: Sequence[str] = (), **options: Any) -> LatencyTable:
    """Measure a LUT into the CSV `out` on this machine (resuming a partial file), as `python -m nas.build_lut`;
    returns the loaded, calibrated table."""
    from latency_lut.build import BuildLUTConfig
    from latency_lut.build import build_lut as build

    return LatencyTable.load(build(_config("build_lut", BuildLUTConfig, {**options, "out": str(out)}, overrides)))


def slim(
    supernet: str | Path,
    lut: str | Path | LatencyTable,
    target_ms: float | Sequence[float],
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    **options: Any,
):
    """Slim the supernet at `supernet` to each latency target on `lut` (as `python -m nas.slim`); returns a
    `SlimResult` whose `specs`, `arch_paths` and `rows` list the found architectures, largest target first."""
    from nas.search.slimming import SlimConfig
    from nas.search.slimming import slim as run

    targets = [target_ms] if isinstance(target_ms, (int, float)) else list(target_ms)
    cfg = _config(
        "slim", SlimConfig, {**options, "target_ms": targets, "out": None if out is None else str(out)}, overrides
    )
    return run(cfg, supernet, lut.source if isinstance(lut, LatencyTable) else lut)


def train(arch: str | Path, out: str | Path, overrides: Sequence[str] = (), **options: Any) -> dict[str, Any]:
    """Train an architecture (an arch.yaml from `slim`, or a preset: l1, l3, l7) into the folder `out` and test
    it (as `python -m nas.train`); returns its metrics.json (test top-1, params, MACs, predicted latency)."""
    import json

    from nas.training.model import TrainModelConfig, train_model

    folder = train_model(_config("train", TrainModelConfig, {**options, "arch": str(arch), "out": str(out)}, overrides))
    return json.loads((folder / "metrics.json").read_text())


def export(
    arch: str | Path, out: str | Path, weights: str | Path | None = None, overrides: Sequence[str] = (), **options: Any
) -> dict[str, Any]:
    """Export the fused deploy model of `arch` (with `weights`, e.g. a trained checkpoint.pt) into the folder
    `out`, checked against torch (as `python -m nas.export`; `format="onnx"` by default); returns the report."""
    from nas.deploy import ExportConfig
    from nas.deploy import export as run

    given = {"arch": str(arch), "out": str(out), "weights": None if weights is None else str(weights)}
    return run(_config("export", ExportConfig, {**options, **given}, overrides))
