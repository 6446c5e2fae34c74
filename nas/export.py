"""`python -m nas.export arch=PATH weights=PATH format=onnx|executorch|coreml|torchscript out=DIR`: ship a model.

    python -m nas.export arch=runs/slim/X/target_1ms/arch.yaml weights=runs/train/Y/checkpoint.pt format=onnx
    python -m nas.export arch=l1 format=coreml out=exports/l1          # fresh weights: for latency checks

The exported model is the deploy model (`model.fuse()`: BN folded, LayerScale folded, heads merged).
ONNX is checked against torch with onnxruntime, ExecuTorch (.pte) with its runtime (max abs diff reported; above
`tolerance` it fails).
CoreML writes an .mlpackage (mlprogram); its numeric check runs only on macOS, where MLModel.predict exists.
TorchScript is checked too. Every check compares with the *unfused* eager model, so a fusion fault fails it.
The LUT-predicted latency is reported beside the latency measured on
the matching backend when that backend runs here. Everything lands in out=DIR/export_<format>.json too.
"""

from __future__ import annotations

from typing import Any

from nas.config import config_main
from nas.deploy import ExportConfig, export, summary
from nas.errors import run_cli

__all__ = ["ExportConfig", "main", "run"]


def run(cfg: ExportConfig) -> dict[str, Any]:
    report = export(cfg)
    print(summary(report))
    return report


def main(argv: list[str] | None = None) -> None:
    config_main("export", ExportConfig, run, argv)


if __name__ == "__main__":
    run_cli(main)
