"""`python -m nas.pipeline --target-ms 1.0`: the whole chain in one command, on the default data.

    train_supernet -> build_lut -> slim --target-ms T -> train (the found arch) -> export (ONNX)

Everything goes under --out (default runs/pipeline): supernet/, lut/lut.csv, slim/, train/, export/, and
pipeline.json with each step's wall time and the final test accuracy. A step whose output is already complete
is skipped, so an interrupted pipeline can simply be re-run. Extra key=value arguments go to every step whose
config has that top-level key, e.g. `data=digits train.epochs=1` reaches both training steps and
`space.widths=[...]` reaches train_supernet and build_lut.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from nas.arch import atomic_write_text
from nas.config import OneLineParser, compose, setup_logging
from nas.errors import run_cli

log = logging.getLogger(__name__)


def route(overrides: list[str], schema: type) -> list[str]:
    """The overrides whose top-level key belongs to `schema` (group selections like `data=digits` included)."""
    keys = {f.name for f in dataclasses.fields(schema)}
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in keys]


def input_stamp(**inputs: Any) -> dict[str, str]:
    """What a step was made from: files by content hash, configs by the hash of their resolved values."""
    import hashlib

    from latency_lut.table import file_hash

    def one(v: Any) -> str:
        if isinstance(v, Path):
            return file_hash(v) if v.is_file() else "missing"
        text = json.dumps(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {k: one(v) for k, v in inputs.items()}


def is_current(folder: Path, stamp: dict[str, str]) -> bool:
    p = folder / "inputs.json"
    return p.is_file() and json.loads(p.read_text()) == stamp


def write_stamp(folder: Path, stamp: dict[str, str]) -> None:
    atomic_write_text(folder / "inputs.json", json.dumps(stamp, indent=2))


def restart(folder: Path, stamp: dict[str, str]) -> None:
    """A step whose inputs changed starts over: its stale outputs go, so nothing downstream can use them."""
    import shutil

    if folder.exists() and not is_current(folder, stamp):
        log.info("== inputs of %s changed since it ran: running it again", folder)
        shutil.rmtree(folder)


def run(target_ms: float, out: Path, overrides: list[str], init: str = "scratch", fmt: str = "onnx") -> dict[str, Any]:
    from nas import build_lut, export, slim, train, train_supernet
    from nas.checkpoint import SUPERNET_KIND, load_checkpoint

    out = Path(out)
    steps: dict[str, float] = {}
    report: dict[str, Any] = {"target_ms": target_ms, "init": init, "overrides": overrides, "wall_s": steps}

    def timed(name: str, fn, done: bool) -> None:
        if done:
            log.info("== %s: already complete in %s, skipped", name, out)
            return
        log.info("== %s", name)
        t0 = time.time()
        fn()
        steps[name] = round(time.time() - t0, 1)
        log.info("== %s done in %.1f s", name, steps[name])

    sn_cfg = compose(
        "train_supernet",
        [*route(overrides, train_supernet.TrainSupernetConfig), f"out={out / 'supernet'}"],
        train_supernet.TrainSupernetConfig,
    )
    # Each step's folder records the hashes of its inputs (inputs.json); a step is skipped only when its output
    # exists and was made from the same inputs, and a step whose inputs changed starts over (so do the steps
    # downstream, since their inputs are its outputs).
    sn_ckpt = out / "supernet" / "supernet.pt"
    stamp = input_stamp(config=sn_cfg)
    restart(out / "supernet", stamp)
    write_stamp(out / "supernet", stamp)  # before the step: an interrupted step is resumed, not thrown away
    sn_done = sn_ckpt.is_file() and load_checkpoint(sn_ckpt, SUPERNET_KIND)["epoch"] >= sn_cfg.train.epochs
    if sn_ckpt.is_file() and not sn_done:
        sn_cfg.resume, sn_cfg.out = str(out / "supernet"), None
    timed("train_supernet", lambda: train_supernet.run(sn_cfg), sn_done)

    lut = out / "lut" / "lut.csv"
    lut_cfg = compose(
        "build_lut", [*route(overrides, build_lut.BuildLUTConfig), f"out={lut}"], build_lut.BuildLUTConfig
    )
    stamp = input_stamp(config=lut_cfg)
    restart(lut.parent, stamp)
    write_stamp(lut.parent, stamp)
    timed("build_lut", lambda: build_lut.run(lut_cfg), False)  # resumable by itself: skips measured rows

    slim_dir = out / "slim"
    slim_cfg = compose(
        "slim",
        [
            *route(overrides, slim.SlimConfig),
            f"target_ms=[{target_ms!r}]",
            f"supernet={sn_ckpt}",
            f"lut={lut}",
            f"out={slim_dir}",
            "overwrite=true",
            "verify=true",  # the LUT was measured here: keep the target as measured, not only as predicted
        ],
        slim.SlimConfig,
    )
    arch = slim_dir / slim.target_dirname(target_ms) / "arch.yaml"
    stamp = input_stamp(config=slim_cfg, supernet=sn_ckpt, lut=lut)
    restart(slim_dir, stamp)
    write_stamp(slim_dir, stamp)
    timed("slim", lambda: slim.run(slim_cfg), arch.is_file())

    train_dir = out / "train"
    tr_cfg = compose(
        "train",
        [*route(overrides, train.TrainModelConfig), f"arch={arch}", f"init={init}", f"lut={lut}", f"out={train_dir}"],
        train.TrainModelConfig,
    )
    stamp = input_stamp(config=tr_cfg, arch=arch)
    restart(train_dir, stamp)
    write_stamp(train_dir, stamp)
    if (train_dir / "checkpoint.pt").is_file() and not (train_dir / "metrics.json").is_file():
        tr_cfg.resume, tr_cfg.out = str(train_dir), None
    timed("train", lambda: train.run(tr_cfg), (train_dir / "metrics.json").is_file())

    ex_cfg = compose(
        "export",
        [
            f"arch={arch}",
            f"weights={train_dir / 'checkpoint.pt'}",
            f"format={fmt}",
            f"out={out / 'export'}",
            f"lut={lut}",
        ],
        export.ExportConfig,
    )
    timed("export", lambda: report.update(export=export.run(ex_cfg)), False)

    metrics = json.loads((train_dir / "metrics.json").read_text())
    report.update(
        test_top1=metrics["test_top1"],
        predicted_ms=metrics["predicted_ms"],
        params_M=metrics["params_M"],
        MACs_M=metrics["MACs_M"],
        arch=str(arch),
    )
    atomic_write_text(out / "pipeline.json", json.dumps(report, indent=2, default=str))
    print(
        f"pipeline done: test top-1 {metrics['test_top1']:.4f} at {metrics['predicted_ms']:.3f} ms predicted; "
        f"step wall times (s): {steps}; report {out / 'pipeline.json'}"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = OneLineParser(prog="python -m nas.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--target-ms", type=float, required=True, help="latency target in ms (LUT-predicted)")
    p.add_argument("--out", default="runs/pipeline", help="folder for every step's outputs")
    p.add_argument("--init", choices=("scratch", "inherited"), default="scratch", help="how nas.train starts")
    p.add_argument("--format", choices=("onnx", "coreml", "torchscript"), default="onnx", help="export format")
    p.add_argument("overrides", nargs="*", help="key=value overrides routed to the steps that have the key")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if a.target_ms <= 0:
        p.error("--target-ms must be positive")
    run(a.target_ms, Path(a.out), a.overrides, a.init, a.format)


if __name__ == "__main__":
    run_cli(main)
