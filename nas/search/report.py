"""The search's outputs: the trajectory table, each emitted architecture with its weights and provenance, the
summary printed at the end, and the staging folder that publishes them as a set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch.nn as nn

from latency_lut.table import LatencyTable
from nas.checkpoint import WEIGHTS_KIND, save_atomic
from nas.search.state import Step
from supernet.arch import ArchSpec


def target_dirname(t: float) -> str:
    return f"target_{t:g}ms"


def trajectory_frame(traj: list[Step]) -> pd.DataFrame:
    rows = []
    for s in traj:
        stages = s.state.stages
        rows.append(
            {
                "step": s.step,
                "action": s.action,
                "where": s.where,
                "predicted_ms": s.latency_ms,
                "val_loss": s.val_loss,
                "val_acc": s.val_acc,
                "score_loss_per_ms": s.score,
                "evaluations": s.evaluations,
                "depths": str([st.depth for st in stages]),
                "widths": str([st.width for st in stages]),
                "mb3d": str([st.num_3d for st in stages]),
                "choices": "|".join(",".join(st) for st in s.state.choices),
            }
        )
    return pd.DataFrame(rows)


def emitted_meta(
    step: Step, spec: ArchSpec, target: float, table: LatencyTable, sn_path: Path, measured: float | None
) -> dict[str, Any]:
    _, lo, hi = table.predict_interval(spec)
    meta: dict[str, Any] = {
        "target_ms": target,
        "predicted_ms": round(step.latency_ms, 6),
        "predicted_interval_ms": [round(lo, 6), round(hi, 6)],  # rows' noise, correction error, host variation
        "measured_ms": None if measured is None else round(measured, 6),
        "val_loss": step.val_loss,
        "val_acc": step.val_acc,
        "slimming_step": step.step,
        "depths": list(spec.depths),
        "widths": list(spec.widths),
        "mb3d_per_stage": list(spec.num_3d),
        "lut": {
            "path": str(Path(table.source).resolve()),
            "sha256_16": table.sha,
            "backend": table.meta["backend"],
            "device": table.meta["device"],
            "threads": table.meta["threads"],
            "batch": table.meta["batch"],
            "calibration_scale": None if table.calibration is None else round(table.calibration.scale, 6),
            "correction": None if table.calibration is None else table.calibration.describe(),
        },
        "supernet": str(sn_path.resolve()),
    }
    if spec.timm_incompatibility() is None:
        kw = spec.to_timm_kwargs()
        meta["timm"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    return meta


def write_target(folder: Path, step: Step, spec: ArchSpec, model: nn.Module, meta: dict[str, Any]) -> None:
    """`arch.yaml` (the spec and its provenance) and `weights.pt` (the sliced, BN-recalibrated weights)."""
    spec.save(folder / "arch.yaml", extra=meta)
    save_atomic(
        {
            "kind": WEIGHTS_KIND,
            "spec": spec.to_dict(),
            "model": model.state_dict(),
            "val_loss": step.val_loss,
            "val_acc": step.val_acc,
            "predicted_ms": step.latency_ms,
            "measured_ms": meta["measured_ms"],
        },
        folder / "weights.pt",
    )


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'target':>8} {'predicted':>10} {'measured':>9} {'val loss':>8} {'val acc':>8} {'step':>5}  architecture"
    lines = [head, "-" * len(head)]
    for r in rows:
        meas = f"{r['measured']:>7.3f}ms" if r["measured"] is not None else f"{'-':>9}"
        lines.append(
            f"{r['target']:>6g}ms {r['predicted']:>8.3f}ms {meas} {r['loss']:>8.4f} {r['acc'] * 100:>7.2f}% "
            f"{r['step']:>5}  {r['arch']}"
        )
    return "\n".join(lines)


def publish(staging: Path, out: Path) -> None:
    """Move each finished output from the staging folder into `out` (each move is a rename). Outputs of an
    earlier run in `out` (overwrite=true) are replaced as a set: its `target_*ms` folders that this run did not
    write are removed, so no stale architecture sits beside the new ones."""
    out.mkdir(parents=True, exist_ok=True)
    new = {item.name for item in staging.iterdir()}
    for old in out.glob("target_*ms"):
        if old.is_dir() and old.name not in new:
            shutil.rmtree(old)
    for item in sorted(staging.iterdir()):
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
