"""Shipping a model: the fused deploy model (`model.fuse()`: BN folded, LayerScale folded, heads merged) exported
to ONNX, CoreML or TorchScript, checked against the *unfused* eager model (so a fusion fault fails it), with its
LUT-predicted latency and, where the LUT's backend runs here, its measured latency. `python -m nas.export` is the
command line of `export`.

ONNX is checked with onnxruntime and ExecuTorch (.pte, XNNPACK-delegated, fp32) with ExecuTorch's runtime (max abs
diff; above `tolerance` it fails). CoreML writes an .mlpackage
(mlprogram) whose numeric check runs only on macOS, where MLModel.predict exists. TorchScript is checked too.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latency_lut.bundle_measure import et_method
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.table import LatencyTable, LUTError
from nas.checkpoint import load_model_weights
from supernet.arch import ArchSpec, arch_meta, resolve_arch
from supernet.errors import ConfigError
from supernet.files import atomic_write_text
from supernet.formats import ExportError, onnx_bytes, pte_bytes, to_coreml

log = logging.getLogger(__name__)
FORMATS = ("onnx", "executorch", "coreml", "torchscript")


@dataclass
class ExportConfig:
    arch: str = "???"  # a preset or an arch YAML
    weights: str | None = None  # weights.pt (nas.slim) or checkpoint.pt (nas.train); none: fresh initialisation
    format: str = "onnx"  # onnx | executorch (.pte, XNNPACK) | coreml | torchscript
    out: str = "exports"  # folder
    num_classes: int = 0  # presets only: 0 keeps the preset's 1000 classes
    input_size: int = 0  # presets only: 0 keeps the preset's 224 px
    tolerance: float = 1e-4  # max abs output difference allowed between the export and torch
    lut: str | None = None  # LUT for the predicted latency; default: the one recorded in the arch YAML
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # as nas.build_lut times its calibration networks


def load_model(cfg: ExportConfig):
    """The spec and its model in eval mode, *unfused* (the reference every export is checked against)."""
    from supernet import build_model

    spec = resolve_arch(cfg.arch)
    if cfg.num_classes or cfg.input_size:
        spec = spec.replace(
            num_classes=cfg.num_classes or spec.num_classes, input_size=cfg.input_size or spec.input_size
        ).validate()
    model = build_model(spec)
    if cfg.weights:
        model.load_state_dict(load_model_weights(cfg.weights, spec)[1])
    return spec, model.eval()


def export_onnx(model, x: torch.Tensor, path: Path) -> None:
    Path(path).write_bytes(onnx_bytes(model, x, "image", "logits"))


def check_onnx(path: Path, x: torch.Tensor, ref: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x.numpy()})
    return float(np.abs(out - ref.numpy()).max())


def export_coreml(model, x: torch.Tensor, path: Path):
    mlmodel = to_coreml(model, x, "image", "logits")
    mlmodel.save(str(path))
    return mlmodel


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Export the fused deploy model of `cfg.arch` (with `cfg.weights`) to `cfg.format` in `cfg.out`, checked
    against the unfused torch model; returns the report also written to export_<format>.json."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}; choose one of {', '.join(FORMATS)}")
    import copy

    spec, unfused = load_model(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(1, spec.in_chans, spec.input_size, spec.input_size)
    with torch.no_grad():
        ref = unfused(x)  # every format is checked against the unfused eager model, not the model it was made from
    model = copy.deepcopy(unfused).fuse()
    report: dict[str, Any] = {
        "arch": cfg.arch,
        "weights": cfg.weights,
        "format": cfg.format,
        "input_shape": list(x.shape),
        "fused": True,
    }
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if cfg.format == "onnx":
            tmp = staging / "model.onnx"
            export_onnx(model, x, tmp)
            report["max_abs_diff_vs_torch"] = diff = check_onnx(tmp, x, ref)
            report["checked_with"] = "onnxruntime"
        elif cfg.format == "executorch":
            tmp = staging / "model.pte"
            tmp.write_bytes(pte_bytes(model, x))
            (out_et,) = et_method(tmp, 0).execute([x])  # the file as written, by ExecuTorch's own runtime
            report["max_abs_diff_vs_torch"] = diff = float((out_et - ref).abs().max())
            report["checked_with"] = "executorch.runtime (XNNPACK)"
        elif cfg.format == "torchscript":
            tmp = staging / "model.pt"
            with torch.no_grad():
                scripted = torch.jit.trace(model, x)
                scripted.save(str(tmp))
                diff = float((torch.jit.load(str(tmp))(x) - ref).abs().max())
            report["max_abs_diff_vs_torch"], report["checked_with"] = diff, "torch.jit.load"
        else:
            tmp = staging / "model.mlpackage"
            mlmodel = export_coreml(model, x, tmp)
            if sys.platform == "darwin":
                pred = mlmodel.predict({"image": x.numpy()})["logits"]
                report["max_abs_diff_vs_torch"] = diff = float(np.abs(pred - ref.numpy()).max())
                report["checked_with"] = "MLModel.predict"
            else:
                diff = None
                report["checked_with"] = None
                report["note"] = "numeric check skipped: CoreML prediction needs macOS (conversion verified)"
                log.info(report["note"])
        if diff is not None and diff > cfg.tolerance:
            raise ExportError(f"{cfg.format} export differs from torch by {diff:.3g} (> tolerance {cfg.tolerance:g})")
        final = out / tmp.name
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        tmp.replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["path"] = str(final)
    report.update(latency_report(cfg, spec))
    atomic_write_text(out / f"export_{cfg.format}.json", json.dumps(report, indent=2))
    return report


def summary(report: dict[str, Any]) -> str:
    """The export's outcome in a line or two: where, the numeric check, and the latency."""
    diff = report.get("max_abs_diff_vs_torch")
    lines = [
        f"exported {report['path']} ({report['format']}) {'' if diff is None else f'max |diff| vs torch {diff:.2e}'}"
    ]
    if report.get("predicted_ms") is not None or report.get("measured_ms") is not None:
        lines.append(
            f"latency: LUT-predicted {report.get('predicted_ms')} ms, measured {report.get('measured_ms')} ms "
            f"({report.get('latency_backend')})"
        )
    return "\n".join(line.rstrip() for line in lines)


def latency_report(cfg: ExportConfig, spec: ArchSpec) -> dict[str, Any]:
    """The LUT-predicted latency, and the same model measured here on the LUT's backend when possible."""
    lut_path = cfg.lut
    if not lut_path and Path(cfg.arch).is_file():
        lut_path = arch_meta(cfg.arch).get("lut", {}).get("path")
    if not lut_path:
        return {}
    try:
        table = LatencyTable.load(lut_path)
        pred = table.predict(spec)
    except LUTError as e:
        log.warning("no LUT-predicted latency: %s", e)
        return {"lut": str(lut_path)}
    rep: dict[str, Any] = {
        "lut": str(lut_path),
        "predicted_ms": round(pred, 4),
        "latency_backend": table.meta["backend"],
    }
    backend, why = table.local_backend()
    if backend is None:
        rep["measured_ms"] = None
        rep["latency_note"] = f"{why}; only the prediction is given"
        return rep
    # latency does not depend on the weights: the one network-measuring path builds and fuses the spec itself,
    # at the LUT's batch size, with the LUT's calibration networks as references (measure_networks)
    m = measure_networks([spec], backend, cfg.measure, int(table.meta["batch"]), references=table.networks())[0]
    rep["measured_ms"] = round(m["ms"], 4)
    rep["measured_drift_removed_ms"] = round(m["ms"] / m["drift"], 4)  # as the machine ran during the LUT's build
    rep["machine_drift"] = round(m["drift"] - 1, 4)
    return rep
