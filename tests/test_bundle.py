"""Device bundles: build one, time it with a Python that has only numpy and onnxruntime (no torch, not this
package), interrupt and resume it, and import the timings as a LUT: real timings, checked for rank order and units
beside a LUT measured directly here, against the same independently timed networks; and known synthetic timings,
whose imported rows, call overhead and calibration are computed by hand."""

import importlib.util
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from latency_lut.backends import make_backend
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.sampling import mixed_specs
from latency_lut.table import LatencyTable, LUTError, encode_stages
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.config import compose
from tests.helpers import FAST, SMALL_SPACE

ORT = [*SMALL_SPACE, *FAST, "backend=onnxruntime", "measure.rounds=5", "measure.chunk=2"]


def isolated_python(root: Path) -> Path:
    """A venv whose only third-party packages are numpy and onnxruntime (linked from this environment, so no
    network is needed); `import torch` fails in it."""
    pkgs = root / "pkgs"
    pkgs.mkdir(parents=True)
    for name in ("numpy", "onnxruntime"):
        spec = importlib.util.find_spec(name)
        for loc in spec.submodule_search_locations:
            (pkgs / Path(loc).name).symlink_to(loc)
        libs = Path(spec.submodule_search_locations[0]).with_name(f"{name}.libs")
        if libs.is_dir():
            (pkgs / libs.name).symlink_to(libs)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    py = root / "venv" / "bin" / "python"
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True)
    (Path(site.stdout.strip()) / "only_numpy_onnxruntime.pth").write_text(str(pkgs) + "\n")
    return py


def run_measure(py: Path, bundle: Path) -> subprocess.CompletedProcess:
    # run from the bundle folder, as on a device: neither torch nor this repository is importable there
    return subprocess.run([py, "measure.py"], cwd=bundle, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timing  # ranks independently timed networks: relative, side by side
def test_bundle_round_trip_with_only_numpy_and_onnxruntime(tmp_path):
    bundle = tmp_path / "bundle"
    build_lut(compose("build_lut", [*ORT, f"bundle={bundle}"], BuildLUTConfig))
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = [it["id"] for it in manifest["items"]]
    assert sorted(i for g in manifest["groups"] for i in g) == sorted(ids)  # every model timed, once
    assert all((bundle / it["file"]).is_file() and it["input"]["layout"] == "NCHW" for it in manifest["items"])

    py = isolated_python(tmp_path / "iso")
    probe = subprocess.run([py, "-c", "import torch"], cwd=bundle, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    probe = subprocess.run([py, "-c", "import nas"], cwd=bundle, capture_output=True, text=True)
    assert probe.returncode != 0

    first = run_measure(py, bundle)
    assert first.returncode == 0, first.stderr
    # the host gate timed the bundle's sentinel beside every group pass (and it is no table item: no timings row)
    assert (bundle / manifest["sentinel"]["file"]).is_file() and manifest["sentinel"]["id"] not in ids
    groups, passes = len(manifest["groups"]), manifest["measure"]["passes"]
    assert f"of {groups * passes} group passes ran slow (sentinel > 10% over its median)" in first.stdout, first.stdout
    timings = pd.read_csv(bundle / "timings.csv")
    assert (timings.groupby("item")["pass"].nunique() == passes).all() and set(timings["item"]) == set(ids)
    assert timings["runtime"].str.startswith("onnxruntime=").all()

    # an interruption after the first chunk: only its rows survive; a second run resumes after it
    chunk = set(i for g in manifest["groups"][: manifest["measure"]["chunk"]] for i in g)
    kept = timings[timings["item"].isin(chunk)]
    kept.to_csv(bundle / "timings.csv", index=False)
    with pytest.raises(LUTError, match="run measure.py again"):
        build_lut(compose("build_lut", [f"from_bundle={bundle}", f"out={tmp_path / 'partial.csv'}"], BuildLUTConfig))
    second = run_measure(py, bundle)
    assert second.returncode == 0 and "1 chunks already in timings.csv" in second.stdout, second.stdout
    resumed = pd.read_csv(bundle / "timings.csv")
    assert len(resumed) == len(timings) and resumed.iloc[: len(kept)].equals(kept.reset_index(drop=True))

    imported = tmp_path / "imported.csv"
    build_lut(compose("build_lut", [f"from_bundle={bundle}", f"out={imported}"], BuildLUTConfig))
    table = LatencyTable.load(imported)
    assert table.calibration is not None and table.meta["backend"] == "onnxruntime"
    direct = tmp_path / "direct.csv"
    build_lut(compose("build_lut", [*ORT, f"out={direct}"], BuildLUTConfig))
    check_real_timings(table, LatencyTable.load(direct))
    check_import_against_synthetic_timings(bundle, timings, tmp_path)


def check_real_timings(imported: LatencyTable, direct: LatencyTable) -> None:
    """Oracle: 16 held-out networks spanning the latency range, timed whole, independently of both tables. The
    imported LUT ranks them as they measure, and its figures are in the same units as a LUT measured here.

    Deliberately no closer comparison. With these test-sized settings (4 calibration networks, 5 rounds, 2
    passes) both tables are noisy, and "the imported LUT's median error is within max(2x, +5 points) of the direct
    one's" failed a CI run (9.0% against 2.5%) and one of three local runs of this test. How close an imported LUT
    comes at real settings is measured in benchmarks/bundle_round_trip.sh (README section 7); the import itself is
    checked exactly by `check_import_against_synthetic_timings`."""
    from supernet.arch import AttentionSpec
    from supernet.space import SpaceConfig

    direct.check_fingerprint(imported.base_spec())  # the same space and settings
    space = SpaceConfig(name="small", depths=[1, 1, 2, 2], widths=[16, 16, 32, 32], input_size=32)
    space.attention = AttentionSpec(key_dim=8, num_heads=2, attn_ratio=2.0)
    # spread over the space's latency range, as calibration networks are: uniform draws of this small space lie
    # so close together that their rank order was within the timing noise (a CI run once gave Spearman 0.74)
    calib = {encode_stages(s) for s, _ in direct.networks()}
    specs = mixed_specs(space, 10, 16, seed=7, exclude=calib, spread=True)
    backend = make_backend("onnxruntime", 1)
    backend.setup()
    meas = np.array([r["ms"] for r in measure_networks(specs, backend, MeasureConfig(warmup=3, rounds=20, passes=3))])

    def rank_r(table):
        pred = np.array([table.predict(s) for s in specs])
        return np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(meas)))[0, 1]

    assert rank_r(imported) > 0.8 and rank_r(direct) > 0.8
    # units: a seconds-for-milliseconds or per-batch slip in measure.py is a factor of 10 or more; machine swings
    # between the two builds stay well inside a factor of 3
    ratio = np.median([imported.predict(s) / direct.predict(s) for s in specs])
    assert 1 / 3 < ratio < 3, ratio


def check_import_against_synthetic_timings(bundle: Path, timings: pd.DataFrame, tmp_path: Path) -> None:
    """Oracle by hand: the bundle's timings.csv replaced by known figures for three passes, and imported.

    Each layer row costs v(row); its two chains cost c and c + v plus the same per-pass drift (which the pairing by
    pass cancels) plus, on the longer chain, a per-pass deviation whose median is 0, rotated so that the median
    lies in a different pass for different items. A calibration network measures 1.25 x (its rows + the call)
    in its fastest pass and more in the others; the call costs 0.05 ms in its fastest pass. So the imported LUT
    must hold v exactly for every row, 0.05 ms for the call, and a calibration scale of exactly 1.25."""
    from latency_lut.bundle import parse_item
    from latency_lut.measure import Chain, Net
    from latency_lut.table import spec_rows
    from supernet.arch import ArchSpec

    synth = bundle.parent / "synthetic"  # the import reads only the manifest and timings.csv
    synth.mkdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    base = ArchSpec.from_dict(manifest["base"])
    items = {it["id"]: parse_item(it, base) for it in manifest["items"]}
    passes = manifest["measure"]["passes"] = 3  # odd, so that the median pass differs from the fastest
    (synth / "manifest.json").write_text(json.dumps(manifest))

    def v(row) -> float:  # a positive figure per row key, scattered, so that a row read as another one shows
        return 0.01 + (zlib.crc32(repr(row.key).encode()) % 997) * 1e-4

    call = 0.05
    nets = [it for it in items.values() if isinstance(it, Net)]
    truth = {it.index: 1.25 * (sum(v(r) for r in spec_rows(it.spec)) + call) for it in nets}
    out = []
    for k, (name, it) in enumerate(items.items()):
        for q in range(passes):
            turn = (q + k) % passes  # which deviation this pass carries, rotated per item
            if isinstance(it, Chain):
                drift = 0.2 * q  # the same on both chains of a row in one pass
                ms = 1.0 + 0.001 * it.row.width + drift + (v(it.row) * (1 + 0.3 * (turn - 1)) if it.with_row else 0)
            elif isinstance(it, Net):
                ms = truth[it.index] * (1 + 0.2 * turn)
            else:
                ms = call * (1 + 0.2 * turn)
            host = 1.0 + 0.1 * q  # the pass's sentinel / its median: as timed, ms x host
            row = {"item": name, "pass": q, "ms": ms, "p25_ms": ms, "p75_ms": ms, "host": host}
            out.append({**timings.iloc[0].to_dict(), **row})
    pd.DataFrame(out).sample(frac=1, random_state=0).to_csv(synth / "timings.csv", index=False)  # in any order
    table_path = tmp_path / "synthetic.csv"
    build_lut(compose("build_lut", [f"from_bundle={synth}", f"out={table_path}"], BuildLUTConfig))
    table = LatencyTable.load(table_path)
    rows = {it.row.key: it.row for it in items.values() if isinstance(it, Chain)}
    assert rows and all(table.raw_row(row) == pytest.approx(v(row), abs=1e-9) for row in rows.values())
    assert table.call_ms == pytest.approx(call) and table.calibration.scale == pytest.approx(1.25)
    assert table.calibration.n == len({n.index for n in nets})
    # as timed, the call is its fastest pass of call x (1 + 0.2 turn) x (1 + 0.1 q), turn = (q + k) % 3
    k = list(items).index(next(n for n, it in items.items() if not isinstance(it, (Chain, Net))))
    as_timed = min(call * (1 + 0.2 * ((q + k) % passes)) * (1 + 0.1 * q) for q in range(passes))
    assert float(table.df.loc[table.df["kind"] == "call", "raw_ms"].iloc[0]) == pytest.approx(as_timed)
    # timings from a measure.py before the host column: read as timed, raw_ms = ms
    pd.read_csv(synth / "timings.csv").drop(columns="host").to_csv(synth / "timings.csv", index=False)
    build_lut(compose("build_lut", [f"from_bundle={synth}", f"out={tmp_path / 'old.csv'}"], BuildLUTConfig))
    old = LatencyTable.load(tmp_path / "old.csv")
    assert (old.df["raw_ms"] == old.df["ms"]).all() and old.calibration.scale == pytest.approx(1.25)


def test_bundle_refuses_a_backend_it_cannot_carry_and_a_non_empty_folder(tmp_path):
    from nas.config import ConfigError

    with pytest.raises(ConfigError, match="onnxruntime or backend=coreml or backend=executorch, not backend=torch"):
        build_lut(compose("build_lut", [*SMALL_SPACE, "backend=torch", f"bundle={tmp_path / 'b'}"], BuildLUTConfig))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(LUTError, match="not empty"):
        build_lut(compose("build_lut", [*ORT, f"bundle={tmp_path / 'full'}"], BuildLUTConfig))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_from_bundle_errors_are_one_line(tmp_path):
    with pytest.raises(LUTError, match="no manifest.json"):
        build_lut(compose("build_lut", [f"from_bundle={tmp_path}"], BuildLUTConfig))
    bundle = tmp_path / "b"
    build_lut(compose("build_lut", [*ORT, "calibration_networks=2", f"bundle={bundle}"], BuildLUTConfig))
    with pytest.raises(LUTError, match="no timings.csv yet"):
        build_lut(compose("build_lut", [f"from_bundle={bundle}"], BuildLUTConfig))
    (bundle / "timings.csv").write_text("item,pass\nx,0\n")
    with pytest.raises(LUTError, match="missing columns"):
        build_lut(compose("build_lut", [f"from_bundle={bundle}"], BuildLUTConfig))


@pytest.mark.slow
def test_coreml_bundle_converts_every_model_and_its_manifest_is_complete(tmp_path):
    """On Linux the CoreML path of measure.py cannot run (MLModel.predict needs macOS); what can be checked is that
    every model converts, lands where the manifest says, with the input shape it states."""
    pytest.importorskip("coremltools")
    bundle = tmp_path / "bundle"
    over = [*SMALL_SPACE, *FAST, "backend=coreml", "calibration_networks=2", f"bundle={bundle}"]
    build_lut(compose("build_lut", over, BuildLUTConfig))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"] == "coreml"
    assert sorted(i for g in manifest["groups"] for i in g) == sorted(it["id"] for it in manifest["items"])
    import coremltools as ct

    for it in manifest["items"]:
        path = bundle / it["file"]
        assert path.suffix == ".mlpackage" and path.is_dir()
    spec = ct.utils.load_spec(str(bundle / manifest["items"][0]["file"]))
    shape = list(spec.description.input[0].type.multiArrayType.shape)
    assert shape == manifest["items"][0]["input"]["shape"]
    shutil.rmtree(bundle)


@pytest.mark.slow
def test_remote_verify_round_trip_with_only_numpy_and_onnxruntime(trained, tmp_path):
    """nas.slim bundle=DIR writes each target's candidate states and the LUT's calibration networks; a Python with
    only numpy and onnxruntime times them; nas.slim from_timings=DIR emits, per target, the lowest-loss candidate
    whose timing, divided by the device's drift (computed here by hand from timings.csv), is at or below it."""
    from nas.search.loading import load_supernet
    from nas.search.remote import REFERENCE
    from nas.slim import SlimConfig
    from nas.slim import run as slim

    lut = tmp_path / "ort.csv"
    build_lut(compose("build_lut", [*ORT, f"out={lut}"], BuildLUTConfig))
    table = LatencyTable.load(lut)
    net, _ = load_supernet(trained[0])
    start = table.predict(net.spec_of(net.derive()))
    targets = [round(start * 0.8, 4), round(start * 0.6, 4)]
    common = [f"target_ms={targets}", f"supernet={trained[0]}", f"lut={lut}", "val_images=150", "bn_batches=2"]
    common += ["batch_size=64", "threads=1", "measure.rounds=5", "measure.warmup=2"]
    bundle = tmp_path / "verify-bundle"
    slim(compose("slim", [*common, f"out={tmp_path / 'plain'}", f"bundle={bundle}"], SlimConfig))
    manifest = json.loads((bundle / "manifest.json").read_text())
    states = manifest["meta"]["verify"]["states"]
    assert len(states) >= len(targets) and len(manifest["items"]) == len(states) + len(table.networks())
    with pytest.raises(LUTError, match="no timings.csv yet"):
        slim(compose("slim", [*common, f"out={tmp_path / 'early'}", f"from_timings={bundle}"], SlimConfig))

    py = isolated_python(tmp_path / "iso")
    done = run_measure(py, bundle)
    assert done.returncode == 0, done.stderr
    out = slim(compose("slim", [*common, f"out={tmp_path / 'remote'}", f"from_timings={bundle}"], SlimConfig))

    # the oracle, by hand: each model's fastest pass, the drift the median of the references' now / then
    timings = pd.read_csv(bundle / "timings.csv").groupby("item")["ms"].min()
    index = {it["id"]: it["index"] for it in manifest["items"]}
    then = manifest["meta"]["verify"]["references_ms"]
    drift = float(np.median([timings[i] / then[k - REFERENCE] for i, k in index.items() if k >= REFERENCE]))
    measured = {states[k]: timings[i] / drift for i, k in index.items() if k < REFERENCE}
    traj = pd.read_csv(out / "trajectory.csv")
    assert len(traj) > 1
    for t in targets:
        meta = yaml.safe_load((out / f"target_{t:g}ms" / "arch.yaml").read_text())["meta"]
        assert meta["measured_ms"] <= t  # 0 targets exceeded on the bundle's own measurements
        cands = manifest["meta"]["verify"]["targets"][repr(t)]
        fits = [k for k in cands if measured[k] <= t]
        # the emitted state is one that measured at or below the target, read exactly as computed here
        assert any(meta["measured_ms"] == pytest.approx(measured[k], abs=1e-6) for k in fits)  # 6 decimals
    # timings of another LUT's search are refused, naming it
    other = tmp_path / "other.csv"
    pd.read_csv(lut).assign(ms=lambda d: d["ms"] * 1.01).to_csv(other, index=False)
    again = [*(o for o in common if not o.startswith("lut=")), f"lut={other}", f"out={tmp_path / 'o'}"]
    again.append(f"from_timings={bundle}")
    with pytest.raises(LUTError, match="written for another LUT"):
        slim(compose("slim", again, SlimConfig))


def test_the_bundle_script_and_the_package_time_a_model_alike(monkeypatch):
    """A device bundle's standalone measure.py and the in-package measurement run one timing loop: on the same
    models, settings and seed they call the models in the same order and report the same statistics (a scripted
    clock in which model k takes exactly cost[k] seconds per call)."""
    import random

    import latency_lut.bundle_measure as standalone
    from latency_lut.backends import Backend
    from latency_lut.measure import MeasureConfig, measure_interleaved

    now = [0.0]
    monkeypatch.setattr(standalone.time, "perf_counter", lambda: now[0])
    cost = {"a": 0.001, "b": 0.003, "c": 0.002}
    calls: list[list[str]] = [[], []]

    def runner(name, log):
        def run():
            log.append(name)
            now[0] += cost[name]

        return run

    cfg = MeasureConfig(warmup=2, rounds=4, runs_per_round=3, percentile=25.0)
    package = measure_interleaved(list(cost), lambda n: runner(n, calls[0]), Backend(0), cfg, random.Random(7))
    import dataclasses

    script = standalone.time_group(
        {n: runner(n, calls[1]) for n in cost}, list(cost), dataclasses.asdict(cfg), random.Random(7)
    )
    assert calls[0] == calls[1] and len(calls[0]) == 3 * (2 + 4 * 3)
    for name, st in zip(cost, package):
        assert st == pytest.approx(script[name]) and st["ms"] == pytest.approx(cost[name] * 1e3) and st["runs"] == 12
