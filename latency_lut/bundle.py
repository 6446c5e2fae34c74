"""Device bundles: a latency table measured where the model will run, without torch or this package there.

`write_bundle` exports every model `nas.build_lut` would time (each layer row's two chains, the per-call `call`
model, the calibration networks) as a file of the target runtime (`.onnx` for onnxruntime, `.pte` for ExecuTorch,
`.mlpackage` for CoreML), with a manifest (item keys, input names, shapes and layouts, the measurement settings and
the very groups and order the interleaved method uses; beside its items, the host gate's `sentinel` network,
latency_lut/measure.py) and a standalone `measure.py` (numpy and the runtime only).
On the device, `measure.py` writes `timings.csv`: each model's statistics per pass. `read_bundle` turns those
timings back into table items exactly as a local build does (a row is the median pass of its chain differences, a
network or the call its fastest pass), so `nas.build_lut from_bundle=DIR` writes a normal, calibrated,
fingerprinted LUT.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from latency_lut.bundle_measure import FIELDS, SENTINEL
from latency_lut.measure import (
    CALL,
    Chain,
    Item,
    MeasureConfig,
    Net,
    item_module,
    network_module,
    plan_groups,
    results_of,
    sentinel_spec,
)
from latency_lut.table import LUTError, Row, decode_stages, encode_stages
from supernet.arch import ArchSpec
from supernet.files import atomic_write_text, read_csv
from supernet.formats import onnx_bytes, pte_bytes, to_coreml

FORMAT = 1
SUFFIX = {"onnxruntime": ".onnx", "coreml": ".mlpackage", "executorch": ".pte"}
MEASURE_SCRIPT = Path(__file__).with_name("bundle_measure.py")


def item_id(item: Chain | Row | Net) -> str:
    """A stable file-safe name: `mb4d-s2-96-96-with`, `embed-s1-32-64-before`, `net-3-v0`, `call`."""
    if isinstance(item, Net):
        return f"net-{item.index}-v{item.visit}"
    if isinstance(item, Chain):
        r = item.row
        return f"{r.kind}-s{r.stage}-{r.in_width}-{r.width}-{'with' if item.with_row else 'before'}"
    return "call"


def describe_item(item: Chain | Row | Net) -> dict[str, Any]:
    if isinstance(item, Net):
        return {"role": "net", "index": item.index, "visit": item.visit, "arch": encode_stages(item.spec)}
    if isinstance(item, Chain):
        return {"role": "chain", "row": dataclasses.asdict(item.row), "with_row": item.with_row}
    return {"role": "call"}


def parse_item(d: dict[str, Any], base: ArchSpec) -> Chain | Row | Net:
    if d["role"] == "net":
        return Net(int(d["index"]), decode_stages(d["arch"], base), int(d.get("visit", 0)))
    if d["role"] == "chain":
        return Chain(Row(**d["row"]), bool(d["with_row"]))
    return CALL


def export_item(item: Chain | Row | Net | str, base: ArchSpec, batch: int, runtime: str, path: Path) -> list[int]:
    """Write the deploy model of `item` (or of the host gate's `SENTINEL`) to `path` in the runtime's format; its
    input shape."""
    module, x = network_module(sentinel_spec(base), batch) if item == SENTINEL else item_module(item, base, batch)
    if runtime == "onnxruntime":
        path.write_bytes(onnx_bytes(module, x))
    elif runtime == "executorch":
        path.write_bytes(pte_bytes(module, x))
    else:
        to_coreml(module, x).save(str(path))
    return list(x.shape)


def write_bundle(
    folder: Path,
    runtime: str,
    items: Sequence[Item],
    base: ArchSpec,
    cfg: MeasureConfig,
    batch: int,
    meta: dict[str, Any],
    progress: Any = None,
) -> Path:
    """Export the models of `items` into a new bundle folder (staged, then moved into place: an existing folder is
    never overwritten). `meta` is what the LUT records besides the device (threads, input size, fingerprint...)."""
    if runtime not in SUFFIX:
        raise LUTError(f"bundles are made for {', '.join(SUFFIX)}, not {runtime!r}")
    if folder.exists() and any(folder.iterdir()):
        raise LUTError(f"bundle={folder} exists and is not empty; choose a new folder")
    groups = plan_groups(items, cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=folder.parent))
    try:
        (staging / "models").mkdir()

        def export(item: Chain | Row | Net | str, name: str) -> dict[str, Any]:
            file = f"models/{name}{SUFFIX[runtime]}"
            shape = export_item(item, base, batch, runtime, staging / file)
            inp = {"name": "x", "shape": shape, "dtype": "float32", "layout": "NCHW"}
            return {"id": name, "file": file, "input": inp}

        entries = []
        for item in (it for g in groups for it in g):
            entries.append({**export(item, item_id(item)), **describe_item(item)})
            if progress is not None:
                progress.update(1)
        manifest = {"format": FORMAT, "runtime": runtime, "threads": meta["threads"], "batch": batch, "meta": meta}
        manifest.update(base=base.to_dict(), measure=dataclasses.asdict(cfg), items=entries)
        manifest["sentinel"] = export(SENTINEL, SENTINEL)  # timed in every group, never a table item
        manifest["groups"] = [[item_id(it) for it in g] for g in groups]
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=1))
        shutil.copyfile(MEASURE_SCRIPT, staging / "measure.py")
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise LUTError(f"from_bundle={folder}: no manifest.json there; not a bundle written by nas.build_lut")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LUTError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise LUTError(f"{path}: bundle format {manifest.get('format')!r}, this version reads format {FORMAT}")
    return manifest


def read_timings(folder: Path, manifest: dict[str, Any]) -> pd.DataFrame:
    path = folder / "timings.csv"
    first = f"{folder}: no timings.csv yet; run `python measure.py` in the bundle on the device first"
    df = read_csv(path, LUTError, first)
    need = set(FIELDS)
    if not need <= set(df.columns):
        raise LUTError(f"{path}: missing columns {sorted(need - set(df.columns))}")
    passes = int(manifest["measure"]["passes"])
    counts = df.groupby("item")["pass"].nunique()
    ids = [it["id"] for it in manifest["items"]]
    missing = [i for i in ids if counts.get(i, 0) < passes]
    if missing:
        raise LUTError(
            f"{path} holds all {passes} passes for {len(ids) - len(missing)} of {len(ids)} models (e.g. {missing[0]} "
            "is incomplete); run measure.py again on the device to finish (it resumes)"
        )
    return df


def read_bundle(folder: Path) -> tuple[dict[str, Any], dict[str, Any], list[tuple[Item, dict[str, float]]]]:
    """(manifest, LUT meta of the device, [(table item, statistics)]) from a measured bundle."""
    manifest = read_manifest(folder)
    df = read_timings(folder, manifest)
    base = ArchSpec.from_dict(manifest["base"])
    items = {it["id"]: parse_item(it, base) for it in manifest["items"]}
    per_pass: dict[Any, list[dict[str, float]]] = {}
    df = df.assign(host=df["host"].fillna(1.0) if "host" in df.columns else 1.0)  # an older measure.py: none
    for r in df.sort_values(["item", "pass"]).itertuples():
        if r.item in items:
            st = {"ms": float(r.ms), "p25_ms": float(r.p25_ms), "p75_ms": float(r.p75_ms), "runs": int(r.runs)}
            per_pass.setdefault(items[r.item], []).append({**st, "host": float(r.host)})
    first = df.iloc[0]
    runtime = str(first["runtime"])
    meta = {**manifest["meta"], "device": str(first["device"]), "versions": runtime, "threads": int(first["threads"])}
    meta["backend"] = manifest["runtime"]
    return manifest, meta, results_of(list(items.values()), per_pass)
