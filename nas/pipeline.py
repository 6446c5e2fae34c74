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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.config import OneLineParser, compose, setup_logging
from nas.errors import run_cli
from supernet.files import atomic_write_text

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


class Steps:
    """Runs the pipeline's steps in order under `out`, each skipped when its output is complete, and records their
    wall times. Each step's folder records the hashes of its inputs (inputs.json); a step is skipped only when its
    output exists and was made from the same inputs, and a step whose inputs changed starts over (so do the steps
    downstream, since their inputs are its outputs)."""

    def __init__(self, out: Path):
        self.out = out
        self.wall_s: dict[str, float] = {}

    def stamp(self, folder: Path, **inputs: Any) -> None:
        stamp = input_stamp(**inputs)
        restart(folder, stamp)
        write_stamp(folder, stamp)  # before the step: an interrupted step is resumed, not thrown away

    def timed(self, name: str, fn: Callable[[], Any], done: bool) -> None:
        if done:
            log.info("== %s: already complete in %s, skipped", name, self.out)
            return
        log.info("== %s", name)
        t0 = time.time()
        fn()
        self.wall_s[name] = round(time.time() - t0, 1)
        log.info("== %s done in %.1f s", name, self.wall_s[name])


def supernet_step(steps: Steps, overrides: list[str]) -> Path:
    from nas import train_supernet
    from nas.checkpoint import SUPERNET_KIND, load_checkpoint

    schema = train_supernet.TrainSupernetConfig
    cfg = compose("train_supernet", [*route(overrides, schema), f"out={steps.out / 'supernet'}"], schema)
    ckpt = steps.out / "supernet" / "supernet.pt"
    steps.stamp(ckpt.parent, config=cfg)
    done = ckpt.is_file() and load_checkpoint(ckpt, SUPERNET_KIND)["epoch"] >= cfg.train.epochs
    if ckpt.is_file() and not done:
        cfg.resume, cfg.out = str(ckpt.parent), None
    steps.timed("train_supernet", lambda: train_supernet.run(cfg), done)
    return ckpt


def lut_step(steps: Steps, overrides: list[str]) -> Path:
    from nas import build_lut

    lut = steps.out / "lut" / "lut.csv"
    cfg = compose("build_lut", [*route(overrides, build_lut.BuildLUTConfig), f"out={lut}"], build_lut.BuildLUTConfig)
    steps.stamp(lut.parent, config=cfg)
    steps.timed("build_lut", lambda: build_lut.run(cfg), False)  # resumable by itself: skips measured rows
    return lut


def slim_step(steps: Steps, overrides: list[str], target_ms: float, sn_ckpt: Path, lut: Path) -> Path:
    from nas import slim
    from nas.search.report import target_dirname

    slim_dir = steps.out / "slim"
    given = [f"target_ms=[{target_ms!r}]", f"supernet={sn_ckpt}", f"lut={lut}", f"out={slim_dir}", "overwrite=true"]
    # verify: the LUT was measured here, so keep the target as measured, not only as predicted
    cfg = compose("slim", [*route(overrides, slim.SlimConfig), *given, "verify=true"], slim.SlimConfig)
    arch = slim_dir / target_dirname(target_ms) / "arch.yaml"
    steps.stamp(slim_dir, config=cfg, supernet=sn_ckpt, lut=lut)
    steps.timed("slim", lambda: slim.run(cfg), arch.is_file())
    return arch


def train_step(steps: Steps, overrides: list[str], arch: Path, init: str, lut: Path) -> Path:
    from nas import train

    train_dir = steps.out / "train"
    given = [f"arch={arch}", f"init={init}", f"lut={lut}", f"out={train_dir}"]
    cfg = compose("train", [*route(overrides, train.TrainModelConfig), *given], train.TrainModelConfig)
    steps.stamp(train_dir, config=cfg, arch=arch)
    done = (train_dir / "metrics.json").is_file()
    if (train_dir / "checkpoint.pt").is_file() and not done:
        cfg.resume, cfg.out = str(train_dir), None
    steps.timed("train", lambda: train.run(cfg), done)
    return train_dir


def export_step(steps: Steps, arch: Path, train_dir: Path, fmt: str, lut: Path) -> dict[str, Any]:
    from nas import export

    given = [f"arch={arch}", f"weights={train_dir / 'checkpoint.pt'}", f"format={fmt}", f"out={steps.out / 'export'}"]
    cfg = compose("export", [*given, f"lut={lut}"], export.ExportConfig)
    report: dict[str, Any] = {}
    steps.timed("export", lambda: report.update(export.run(cfg)), False)
    return report


def run(target_ms: float, out: Path, overrides: list[str], init: str = "scratch", fmt: str = "onnx") -> dict[str, Any]:
    steps = Steps(Path(out))
    sn_ckpt = supernet_step(steps, overrides)
    lut = lut_step(steps, overrides)
    arch = slim_step(steps, overrides, target_ms, sn_ckpt, lut)
    train_dir = train_step(steps, overrides, arch, init, lut)
    exported = export_step(steps, arch, train_dir, fmt, lut)
    metrics = json.loads((train_dir / "metrics.json").read_text())
    report = {"target_ms": target_ms, "init": init, "overrides": overrides, "wall_s": steps.wall_s, "export": exported}
    report.update({k: metrics[k] for k in ("test_top1", "predicted_ms", "params_M", "MACs_M")}, arch=str(arch))
    atomic_write_text(steps.out / "pipeline.json", json.dumps(report, indent=2, default=str))
    print(
        f"pipeline done: test top-1 {metrics['test_top1']:.4f} at {metrics['predicted_ms']:.3f} ms predicted; "
        f"step wall times (s): {steps.wall_s}; report {steps.out / 'pipeline.json'}"
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
