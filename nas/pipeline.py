"""`python -m nas.pipeline --target-ms 1.0`: the whole chain in one command, on the default data.

    train_supernet -> build_lut -> slim --target-ms T -> train (the found arch) -> export (ONNX)

Everything goes under --out (default runs/pipeline): supernet/, lut/lut.csv, slim/, train/, export/, and
pipeline.json with each step's wall time and the final test accuracy. A step whose output is already complete
is skipped, so an interrupted pipeline can simply be re-run. Extra key=value arguments go to every step whose
config has that top-level key, e.g. `data=digits train.epochs=1` reaches both training steps and
`space.widths=[...]` reaches train_supernet and build_lut.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from nas.config import OneLineParser, setup_logging
from nas.errors import run_cli
from nas.workflow import run_pipeline

__all__ = ["main", "run"]


def run(target_ms: float, out: Path, overrides: list[str], init: str = "scratch", fmt: str = "onnx") -> dict[str, Any]:
    report = run_pipeline(target_ms, out, overrides, init, fmt)
    print(
        f"pipeline done: test top-1 {report['test_top1']:.4f} at {report['predicted_ms']:.3f} ms predicted; "
        f"step wall times (s): {report['wall_s']}; report {Path(out) / 'pipeline.json'}"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = OneLineParser(prog="python -m nas.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--target-ms", type=float, required=True, help="latency target in ms (LUT-predicted)")
    p.add_argument("--out", default="runs/pipeline", help="folder for every step's outputs")
    p.add_argument("--init", choices=("scratch", "inherited"), default="scratch", help="how nas.train starts")
    p.add_argument(
        "--format", choices=("onnx", "executorch", "coreml", "torchscript"), default="onnx", help="export format"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides routed to the steps that have the key")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.target_ms <= 0:
        p.error("--target-ms must be positive")
    run(a.target_ms, Path(a.out), a.overrides, a.init, a.format)


if __name__ == "__main__":
    run_cli(main)
