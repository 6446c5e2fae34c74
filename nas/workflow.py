"""The whole chain as one call, `run_pipeline`: train_supernet -> build_lut -> slim (verified) -> train -> export,
each step into its folder under `out`, skipped when its output is complete and made from the same inputs
(inputs.json holds their hashes), started over when they changed. `python -m nas.pipeline` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.config import compose
from supernet.files import atomic_write_text

log = logging.getLogger(__name__)


def route(overrides: list[str], schema: type) -> list[str]:
    """The overrides whose key belongs to `schema` (group selections like `data=digits` included). A dotted key
    goes only where its top-level field is a config group: `supernet.hard=true` reaches train_supernet, whose
    `supernet` is a group, and not slim, whose `supernet` is a path."""
    import typing

    hints = typing.get_type_hints(schema)
    keys = {f.name for f in dataclasses.fields(schema)}

    def belongs(o: str) -> bool:
        top, dot, _ = o.lstrip("+~").split("=", 1)[0].partition(".")
        return top in keys and (not dot or dataclasses.is_dataclass(hints.get(top)))

    return [o for o in overrides if belongs(o)]


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
    from nas.checkpoint import SUPERNET_KIND, load_checkpoint
    from nas.training.supernet_run import TrainSupernetConfig, train_supernet

    schema = TrainSupernetConfig
    cfg = compose("train_supernet", [*route(overrides, schema), f"out={steps.out / 'supernet'}"], schema)
    ckpt = steps.out / "supernet" / "supernet.pt"
    steps.stamp(ckpt.parent, config=cfg)
    done = ckpt.is_file() and load_checkpoint(ckpt, SUPERNET_KIND)["epoch"] >= cfg.train.epochs
    if ckpt.is_file() and not done:
        cfg.resume, cfg.out = str(ckpt.parent), None
    steps.timed("train_supernet", lambda: train_supernet(cfg), done)
    return ckpt


def lut_step(steps: Steps, overrides: list[str]) -> Path:
    from latency_lut.build import BuildLUTConfig, build_lut

    lut = steps.out / "lut" / "lut.csv"
    cfg = compose("build_lut", [*route(overrides, BuildLUTConfig), f"out={lut}"], BuildLUTConfig)
    steps.stamp(lut.parent, config=cfg)
    steps.timed("build_lut", lambda: build_lut(cfg), False)  # resumable by itself: skips measured rows
    return lut


def slim_step(steps: Steps, overrides: list[str], target_ms: float, sn_ckpt: Path, lut: Path) -> Path:
    from nas.search.report import target_dirname
    from nas.search.slimming import SlimConfig, slim

    slim_dir = steps.out / "slim"
    given = [f"target_ms=[{target_ms!r}]", f"supernet={sn_ckpt}", f"lut={lut}", f"out={slim_dir}", "overwrite=true"]
    # verify: the LUT was measured here, so keep the target as measured, not only as predicted
    cfg = compose("slim", [*route(overrides, SlimConfig), *given, "verify=true"], SlimConfig)
    arch = slim_dir / target_dirname(target_ms) / "arch.yaml"
    steps.stamp(slim_dir, config=cfg, supernet=sn_ckpt, lut=lut)
    steps.timed("slim", lambda: log.info("%s", slim(cfg, sn_ckpt, lut).summary()), arch.is_file())
    return arch


def train_step(steps: Steps, overrides: list[str], arch: Path, init: str, lut: Path) -> Path:
    from nas.training.model import TrainModelConfig, train_model

    train_dir = steps.out / "train"
    given = [f"arch={arch}", f"init={init}", f"lut={lut}", f"out={train_dir}"]
    cfg = compose("train", [*route(overrides, TrainModelConfig), *given], TrainModelConfig)
    steps.stamp(train_dir, config=cfg, arch=arch)
    done = (train_dir / "metrics.json").is_file()
    if (train_dir / "checkpoint.pt").is_file() and not done:
        cfg.resume, cfg.out = str(train_dir), None
    steps.timed("train", lambda: train_model(cfg), done)
    return train_dir


def export_step(steps: Steps, arch: Path, train_dir: Path, fmt: str, lut: Path) -> dict[str, Any]:
    from nas.deploy import ExportConfig, export, summary

    given = [f"arch={arch}", f"weights={train_dir / 'checkpoint.pt'}", f"format={fmt}", f"out={steps.out / 'export'}"]
    cfg = compose("export", [*given, f"lut={lut}"], ExportConfig)
    report: dict[str, Any] = {}
    steps.timed("export", lambda: report.update(export(cfg)), False)
    log.info("%s", summary(report))
    return report


def run_pipeline(
    target_ms: float, out: Path, overrides: list[str], init: str = "scratch", fmt: str = "onnx"
) -> dict[str, Any]:
    """Every step into `out` (skipping complete ones); returns the report also written to pipeline.json."""
    steps = Steps(Path(out))
    sn_ckpt = supernet_step(steps, overrides)
    lut = lut_step(steps, overrides)
    arch = slim_step(steps, overrides, target_ms, sn_ckpt, lut)
    train_dir = train_step(steps, overrides, arch, init, lut)
    exported = export_step(steps, arch, train_dir, fmt, lut)
    metrics = json.loads((train_dir / "metrics.json").read_text())
    report = {"target_ms": target_ms, "init": init, "overrides": overrides, "wall_s": steps.wall_s, "export": exported}
    report.update({k: metrics[k] for k in ("test_top1", "predicted_ms", "params_M", "MACs_M")}, arch=str(arch))
    report["precision"] = metrics.get("precision")  # what train.amp resolved to (None: a run from before it was kept)
    atomic_write_text(steps.out / "pipeline.json", json.dumps(report, indent=2, default=str))
    return report
