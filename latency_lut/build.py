"""Writing a LUT: measure a space's rows and calibration networks on a backend into the CSV that
`latency_lut.table.LatencyTable` reads, resume a partial file, re-time its calibration networks, export the same
items into a device bundle, or import a bundle's timings. `python -m nas.build_lut` is the command line of
`build_lut`; the method itself is latency_lut/measure.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from latency_lut.backends import BACKENDS, CPU_BACKENDS, make_backend
from latency_lut.bundle import SUFFIX, read_bundle, write_bundle
from latency_lut.measure import (
    CALL,
    MeasureConfig,
    Net,
    item_weights,
    measure_items,
    measure_networks,
    row_module,
    space_rows,
)
from latency_lut.sampling import mixed_specs
from latency_lut.table import (
    CALL_KEY,
    COLUMNS,
    KEY_COLUMNS,
    OPTIONAL_COLUMNS,
    LatencyTable,
    LUTError,
    Row,
    decode_stages,
    encode_fingerprint,
    encode_stages,
    fingerprint,
)
from supernet.arch import ArchSpec
from supernet.errors import ConfigError
from supernet.files import atomic_write_text
from supernet.formats import to_coreml
from supernet.space import SpaceConfig

log = logging.getLogger(__name__)


@dataclass
class BuildLUTConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    backend: str = "torch"  # torch | onnxruntime | executorch | cuda | coreml
    out: str | None = None  # CSV path; default runs/lut/<space>-<backend>-<timestamp>/lut.csv
    threads: int = 1  # pinned and recorded; 1 is the usual mobile-like setting
    batch: int = 1
    num_classes: int = 10  # the head row's classifier width; must match the supernet's data
    in_chans: int = 3
    convert_only: bool = False  # coreml: convert every block and report failures, no timing
    width_step: int = 16  # stage widths are measured in steps of this many channels
    calibration_networks: int = 24  # whole networks measured with the rows; the table fits its correction on them
    calibration_seed: int = 1000  # validation draws with other seeds and skips these networks
    calibration_visits: int = 3  # each calibration network is measured this many times, spread over the build
    recalibrate: bool = False  # re-time only the calibration networks of the existing out= LUT (machine drift)
    # a build whose machine speed varied more than this (the table's host_variation) is built again, up to
    # `rebuilds` times, and the steadier build is kept (benchmarks/README.md section 3, runs 5-8 on the Intel Xeon:
    # builds above 10% were the worse of their pair; those at 5-10% met the fidelity goal once in 7); 0 rebuilds: never
    rebuild_above: float = 0.05
    rebuilds: int = 1
    bundle: str | None = None  # write a device bundle here instead of measuring (onnxruntime | executorch | coreml)
    from_bundle: str | None = None  # turn a measured bundle's timings.csv into a LUT (out= or DIR/lut.csv)
    measure: MeasureConfig = field(default_factory=MeasureConfig)


def default_out(cfg: BuildLUTConfig) -> Path:
    return Path("runs/lut") / f"{cfg.space.name}-{cfg.backend}-{time.strftime('%Y%m%d-%H%M%S')}" / "lut.csv"


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def existing_rows(path: Path, meta: dict[str, object]) -> pd.DataFrame:
    """Rows already measured in `path` (resume); refuses a file measured with other settings."""
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = LatencyTable.load(path)
    theirs = {**table.meta, "fingerprint": table.df["fingerprint"].iloc[0] if "fingerprint" in table.df else None}
    for k, v in meta.items():
        if str(theirs[k]) != str(v):
            raise LUTError(
                f"{path} exists with {k}={theirs[k]!r}, this run has {k}={v!r}; choose another out= or delete it"
            )
    return table.df


def build_lut(cfg: BuildLUTConfig) -> Path:
    """Measure (or resume, recalibrate, bundle, import, CoreML-check) the LUT `cfg` describes; returns the file
    written (the LUT CSV, the bundle folder or the CoreML report)."""
    if cfg.from_bundle:
        return import_bundle(Path(cfg.from_bundle), Path(cfg.out) if cfg.out else Path(cfg.from_bundle) / "lut.csv")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend={cfg.backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if cfg.width_step <= 0 or cfg.calibration_networks < 0 or cfg.calibration_visits < 1:
        raise ConfigError("width_step and calibration_visits must be positive, calibration_networks non-negative")
    spec = cfg.space.max_spec(cfg.num_classes, cfg.in_chans)
    rows = space_rows(cfg.space, cfg.num_classes, cfg.width_step)
    if cfg.bundle:
        return make_bundle(cfg, spec, rows)
    backend = make_backend(cfg.backend, cfg.threads, cfg.convert_only)
    backend.setup()
    if warning := threads_warning(cfg.backend, cfg.threads, usable_cores()):
        log.warning(warning)
    if cfg.backend == "coreml" and cfg.convert_only:
        return coreml_check(cfg, rows)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if cfg.recalibrate:
        return recalibrate(out, backend, cfg)
    meta = {"backend": backend.name, "device": backend.device, "versions": backend.versions, **setting_meta(cfg, spec)}
    df = existing_rows(out, meta)
    done = set(map(tuple, df[KEY_COLUMNS].astype({"stage": int, "in_width": int, "width": int}).to_numpy().tolist()))
    nets = calibration_nets(cfg)
    todo = [r for r in rows if r.key not in done] + [n for n in nets if ("net", 3, n.index, n.visit) not in done]
    log.info(
        "LUT %s: %d rows and %d calibration networks x %d visits for space %s at %d px (%s); %d already measured, "
        "%d to go",
        out,
        len(rows),
        cfg.calibration_networks,
        cfg.calibration_visits,
        cfg.space.name,
        cfg.space.input_size,
        backend.name,
        len(rows) + len(nets) - len(todo),
        len(todo),
    )
    if CALL_KEY not in done:
        todo.append(CALL)
    measure_into(out, df, todo, backend, cfg, meta, spec)
    table = LatencyTable.load(out)
    for k in range(cfg.rebuilds):
        if not table.host_variation > cfg.rebuild_above or aside_path(out, k).exists():
            break  # steady enough, or built again before (a re-run of a finished build measures nothing new)
        table = rebuild(
            out, table, k, lambda path: measure_into(path, df[:0], [*rows, *nets, CALL], backend, cfg, meta, spec), cfg
        )
    return finish(out, table)


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_warning(backend: str, threads: int, cores: int) -> str | None:
    """A warning when a CPU build's threads take every core this process has: nothing is left for the OS or a
    shared host's other tenants, and the timings follow them (benchmarks/README.md section 3: over runs 5-10 on a
    2-vCPU Intel Xeon, builds at 2 threads met the fidelity goal in 5 of 24, at 1 thread in 25 of 44)."""
    if backend not in CPU_BACKENDS or threads < cores:
        return None
    return (
        f"threads={threads} uses all {cores} of this machine's cores: nothing is left for the system, so the "
        f"timings will follow whatever else runs here; a table built with threads={max(1, cores - 1)} (or on a "
        f"machine with more cores) is steadier"
    )


def measure_into(out: Path, df: pd.DataFrame, todo: list, backend, cfg: BuildLUTConfig, meta: dict, spec) -> None:
    """Measure `todo` and write the rows, after those already in `df`, to `out` (rewritten atomically after every
    group, so that an interrupted build resumes)."""
    frames = [df] if len(df) else []

    def on_group(results: list[tuple[object, dict[str, float]]]) -> None:
        frames.append(pd.DataFrame([table_row(item, stats, meta, spec) for item, stats in results]))
        write_csv_atomic(pd.concat(frames, ignore_index=True)[COLUMNS + OPTIONAL_COLUMNS], out)

    with tqdm(total=len(todo), desc=f"measuring ({backend.name})", unit="item", dynamic_ncols=True) as bar:
        gate = measure_items(todo, spec, backend, cfg.measure, cfg.batch, on_group, bar)
    log.info(gate.describe())


def aside_path(out: Path, k: int) -> Path:
    """Where the build not kept by the k-th rebuild goes."""
    return out.with_name(f"{out.stem}.unsteady{k + 1}{out.suffix}")


def rebuild(
    out: Path, table: LatencyTable, k: int, measure: Callable[[Path], None], cfg: BuildLUTConfig
) -> LatencyTable:
    """Build again from scratch beside `out` (`measure(path)`) and keep the steadier of the two tables as `out`;
    the other is kept as `<out>.unsteady<k>.csv`, never lost. Returns the table kept."""
    log.warning(
        "this machine's speed varied by %.1f%% during the build, above rebuild_above=%.0f%%: building again "
        "(%d of %d) and keeping the steadier build",
        table.host_variation * 100,
        cfg.rebuild_above * 100,
        k + 1,
        cfg.rebuilds,
    )
    again = out.with_name(f"{out.stem}.rebuild{k + 1}{out.suffix}")
    again.unlink(missing_ok=True)  # a rebuild interrupted earlier starts over
    measure(again)
    other = LatencyTable.load(again)
    keep, drop = (other, table) if other.host_variation < table.host_variation else (table, other)
    aside = aside_path(out, k)
    if keep is other:
        os.replace(out, aside)
        os.replace(again, out)
    else:
        os.replace(again, aside)
    log.warning(
        "kept the build that varied by %.1f%% as %s; the one that varied by %.1f%% is %s",
        keep.host_variation * 100,
        out,
        drop.host_variation * 100,
        aside,
    )
    return LatencyTable.load(out)


def setting_meta(cfg: BuildLUTConfig, spec) -> dict[str, object]:
    """What every row records besides the backend and device: the settings a LUT is only valid for."""
    fp = encode_fingerprint(fingerprint(spec, cfg.width_step))
    return {"threads": cfg.threads, "batch": cfg.batch, "input_size": cfg.space.input_size, "fingerprint": fp}


def calibration_nets(cfg: BuildLUTConfig) -> list[Net]:
    """Every visit of every calibration network (the table keeps each network's median over its visits)."""
    n, seed = cfg.calibration_networks, cfg.calibration_seed
    specs = mixed_specs(cfg.space, cfg.num_classes, n, seed, cfg.width_step, spread=True)
    return [Net(k, s, v) for v in range(cfg.calibration_visits) for k, s in enumerate(specs)]


def finish(out: Path, table: LatencyTable | None = None) -> Path:
    """Log what was written: `table`, or `out` loaded again (re-validating it and fitting the calibration)."""
    table = table if table is not None else LatencyTable.load(out)
    log.info("wrote %s: %d rows, %s", out, len(table.df), table.describe())
    return out


def fit_report(table: LatencyTable) -> str:
    """The chosen correction, every model tried with its cross-validated error, and the machine's steadiness."""
    if table.calibration is None:
        return "uncalibrated: predict is the raw sum of rows (build with calibration_networks >= 3)"
    c = table.calibration
    tried = ", ".join(f"{m} {e * 100:.1f}%" for m, e in c.candidates) or "none (too few networks)"
    return f"{c.describe()}\nleave-one-out error of each model tried: {tried}\n{table.steadiness()}"


def make_bundle(cfg: BuildLUTConfig, spec, rows: list[Row]) -> Path:
    """Export every item a local build would time into a device bundle (latency_lut/bundle.py); no timing here."""
    if cfg.backend not in SUFFIX:
        raise ConfigError(f"bundle= is for backend={' or backend='.join(SUFFIX)}, not backend={cfg.backend}")
    items = [*rows, *calibration_nets(cfg), CALL]
    folder = Path(cfg.bundle)
    torch.manual_seed(cfg.measure.seed)
    with tqdm(total=len(rows) + len(items), desc=f"exporting ({cfg.backend})", unit="model") as bar:
        write_bundle(folder, cfg.backend, items, spec, cfg.measure, cfg.batch, setting_meta(cfg, spec), bar)
    log.info(
        "wrote bundle %s: copy it to the device, run `python measure.py` inside it (numpy and %s only), copy it "
        "back, then `python -m nas.build_lut from_bundle=%s out=lut.csv`",
        folder,
        {"onnxruntime": "onnxruntime", "executorch": "executorch", "coreml": "coremltools on macOS"}[cfg.backend],
        folder,
    )
    return folder


def import_bundle(folder: Path, out: Path) -> Path:
    """A normal, calibrated, fingerprinted LUT from a bundle's timings (the device's name and runtime recorded)."""
    if out.exists():
        raise LUTError(f"out={out} exists; choose another out= (a measured LUT is never overwritten)")
    manifest, meta, results = read_bundle(folder)
    base = ArchSpec.from_dict(manifest["base"])
    rows = [table_row(item, stats, meta, base) for item, stats in results]
    write_csv_atomic(pd.DataFrame(rows)[COLUMNS + OPTIONAL_COLUMNS], out)
    return finish(out)


def recalibrate(out: Path, backend, cfg: BuildLUTConfig) -> Path:
    """Re-time the calibration networks of the LUT at `out` (its rows stay) and rewrite it: the calibration then
    reflects the machine as it is now. Seconds, where a full build takes a minute or more."""
    if not out.is_file():
        raise LUTError(f"recalibrate=true: no LUT at out={out} to recalibrate")
    table = LatencyTable.load(out)
    if str(table.meta["device"]) != backend.device or str(table.meta["backend"]) != backend.name:
        raise LUTError(f"{out} was measured with {table.describe()}; recalibrate it where it was measured")
    nets = table.networks()
    if not nets:
        raise LUTError(f"{out} holds no calibration networks to re-time (build it with calibration_networks > 0)")
    before = table.calibration.describe() if table.calibration else "uncalibrated"
    df = table.df.copy()
    rows = df.index[df["kind"] == "net"]  # every visit is re-timed (measure_networks spreads repeats in time)
    base = table.base_spec()
    specs = [decode_stages(arch, base) for arch in df.loc[rows, "arch"]]  # each readable: networks() read them
    m, batch = cfg.measure, int(table.meta["batch"])
    stats = measure_networks(specs, backend, m, batch, m.seed, normalize=m.normalize)  # as the build read its rows
    cols = ["ms", "p25_ms", "p75_ms", "runs", "raw_ms"]
    for i, st in zip(rows, stats):
        df.loc[i, cols] = [st[c] for c in cols]
    if df["weights"].isna().any():  # written before the column: the weights need no timing, so record them now
        df["weights"] = [item_weights(item, base) for item in table_items(df, base)]
    write_csv_atomic(df, out)
    after = LatencyTable.load(out).calibration.describe()
    log.info("recalibrated %s on %d networks (%d visits): %s -> %s", out, len(nets), len(rows), before, after)
    return out


def table_items(df: pd.DataFrame, base: ArchSpec) -> list[Row | Net]:
    """What each row of a table's frame stands for (the inverse of `table_row`'s keys)."""
    return [
        Net(int(r.in_width), decode_stages(r.arch, base), int(r.width))
        if r.kind == "net"
        else Row(r.kind, int(r.stage), int(r.in_width), int(r.width), int(r.resolution))
        for r in df.itertuples()
    ]


def table_row(item: Row | Net, stats: dict[str, float], meta: dict[str, object], base: ArchSpec) -> dict[str, object]:
    """One CSV row: a layer row (its chain difference), the per-call overhead, or a calibration network, with
    its deployed weights (`item_weights`; `base` carries the space's hyper-parameters)."""
    weights = item_weights(item, base)
    if isinstance(item, Net):
        key = {"kind": "net", "stage": 3, "in_width": item.index, "width": item.visit}
        key["resolution"] = item.spec.input_size
        return {**key, **stats, **meta, "arch": encode_stages(item.spec), "weights": weights}
    return {**dataclasses.asdict(item), **stats, **meta, "arch": "", "weights": weights}


def coreml_check(cfg: BuildLUTConfig, rows: list[Row]) -> Path:
    """Convert every row's block with coremltools; write a report CSV and fail if any block does not convert."""
    spec = cfg.space.max_spec(cfg.num_classes, cfg.in_chans)
    report = []
    for row in tqdm(rows, desc="coreml convert", unit="row"):
        try:
            to_coreml(*row_module(row, spec, cfg.batch))
            report.append({**dataclasses.asdict(row), "converted": True, "error": ""})
        except Exception as e:  # any converter failure is a finding, not a crash
            report.append({**dataclasses.asdict(row), "converted": False, "error": " ".join(str(e).split())[:300]})
    out = Path(cfg.out) if cfg.out else default_out(cfg).with_name("coreml_compat.csv")
    df = pd.DataFrame(report)
    write_csv_atomic(df, out)
    failed = df[~df["converted"]]
    log.info(
        "coreml: %d/%d blocks converted (timing skipped: MLModel.predict needs macOS); report %s",
        len(df) - len(failed),
        len(df),
        out,
    )
    if len(failed):
        raise LUTError(
            f"{len(failed)} block(s) failed CoreML conversion, e.g. {failed.iloc[0]['kind']} "
            f"stage {failed.iloc[0]['stage'] + 1}: {failed.iloc[0]['error'][:120]} (see {out})"
        )
    return out
