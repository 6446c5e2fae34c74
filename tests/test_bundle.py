"""Device bundles: build one, time it with a Python that has only numpy and onnxruntime (no torch, not this
package), interrupt and resume it, import the timings as a LUT, and compare that LUT's whole-network fidelity with
a LUT measured directly here, both against the same independently timed networks."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latency_lut.backends import make_backend
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.sampling import mixed_specs
from latency_lut.table import LatencyTable, LUTError, encode_stages
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.config import compose
from tests.test_lut import FAST, SMALL_SPACE

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
    timings = pd.read_csv(bundle / "timings.csv")
    passes = manifest["measure"]["passes"]
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
    check_fidelity(table, LatencyTable.load(direct))


def check_fidelity(imported: LatencyTable, direct: LatencyTable) -> None:
    """Oracle: 16 held-out networks spanning the latency range, timed whole, independently of both tables; the
    imported LUT predicts them about as well as the directly measured one (same rank order, median error within a
    few points of it)."""
    from supernet.space import AttentionConfig, SpaceConfig

    direct.check_fingerprint(imported.base_spec())  # the same space and settings
    space = SpaceConfig(name="small", depths=[1, 1, 2, 2], widths=[16, 16, 32, 32], input_size=32)
    space.attention = AttentionConfig(key_dim=8, num_heads=2, attn_ratio=2.0)
    # spread over the space's latency range, as calibration networks are: uniform draws of this small space lie
    # so close together that their rank order was within the timing noise (a CI run once gave Spearman 0.74)
    calib = {encode_stages(s) for s, _ in direct.networks()}
    specs = mixed_specs(space, 10, 16, seed=7, exclude=calib, spread=True)
    backend = make_backend("onnxruntime", 1)
    backend.setup()
    meas = np.array([r["ms"] for r in measure_networks(specs, backend, MeasureConfig(warmup=3, rounds=20, passes=3))])

    def errors(table):
        pred = np.array([table.predict(s) for s in specs])
        return np.abs(pred / meas - 1) * 100, np.corrcoef(np.argsort(np.argsort(pred)), np.argsort(np.argsort(meas)))

    (e_imp, r_imp), (e_dir, r_dir) = errors(imported), errors(direct)
    assert r_imp[0, 1] > 0.8 and r_dir[0, 1] > 0.8
    assert np.median(e_imp) <= max(2 * np.median(e_dir), np.median(e_dir) + 5), (np.median(e_imp), np.median(e_dir))


def test_bundle_refuses_a_backend_it_cannot_carry_and_a_non_empty_folder(tmp_path):
    from nas.config import ConfigError

    with pytest.raises(ConfigError, match="onnxruntime or backend=coreml"):
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
