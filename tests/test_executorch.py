"""ExecuTorch (XNNPACK) as a LUT backend, an export format and a device bundle. ExecuTorch is an optional extra
(pip install -e '.[executorch]'); without it these tests are skipped with one line, and CI installs it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from latency_lut.table import LatencyTable
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.config import compose
from supernet.arch import StageSpec
from supernet.formats import executorch_available
from tests.helpers import FAST, SMALL_SPACE

pytestmark = pytest.mark.skipif(not executorch_available(), reason="executorch not installed (the executorch extra)")
# the smallest space that still has every row kind (MB3D in stages 3-4, a stage-3 unflat): every row's two chains
# and every network are lowered through torch.export and XNNPACK, about a second each
ET = [*SMALL_SPACE, "space.depths=[1,1,1,1]", "space.widths=[16,16,16,32]", *FAST, "backend=executorch"]
ET += ["measure.rounds=5", "measure.chunk=2"]


def test_pte_matches_the_unfused_torch_model():
    """Oracle: the unfused eager model (random weights, an MB3D included) on an input the export never saw,
    against the fused model's .pte run by ExecuTorch's runtime."""
    import copy

    from latency_lut.bundle_measure import et_method
    from supernet import build_model
    from supernet.arch import StageSpec
    from supernet.formats import pte_bytes
    from tests.helpers import SMALL_SUPERNET_SPACE, randomize_state

    spec = SMALL_SUPERNET_SPACE.max_spec(10).with_stage(3, StageSpec(64, ("4d", "3d")))
    model = build_model(spec).eval()
    randomize_state(model)
    x = torch.randn(1, 3, spec.input_size, spec.input_size)
    method = et_method(pte_bytes(copy.deepcopy(model).fuse(), x), 1)
    fresh = torch.randn_like(x)
    with torch.no_grad():
        ref = model(fresh)
    (out,) = method.execute([fresh])
    assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-4


def test_export_format_executorch_writes_a_checked_pte(tmp_path):
    from nas.export import ExportConfig
    from nas.export import run as export

    rep = export(
        compose(
            "export",
            ["arch=l1", "input_size=64", "num_classes=10", "format=executorch", f"out={tmp_path}"],
            ExportConfig,
        )
    )
    assert Path(rep["path"]).name == "model.pte" and Path(rep["path"]).stat().st_size > 10_000
    assert rep["checked_with"].startswith("executorch.runtime") and rep["max_abs_diff_vs_torch"] < 1e-4
    assert json.loads((tmp_path / "export_executorch.json").read_text())["format"] == "executorch"


@pytest.mark.slow
def test_executorch_lut_builds_calibrates_and_prices_networks(tmp_path):
    lut = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*ET, f"out={lut}"], BuildLUTConfig))
    table = LatencyTable.load(lut)
    assert table.meta["backend"] == "executorch" and str(table.meta["versions"]).startswith("executorch=")
    assert table.call_ms > 0 and table.calibration is not None and len(table.networks()) == 4
    assert (table.df.loc[table.df["kind"] == "net", "ms"] > 0).all()
    # costs more than itself with every stage after the first emptied (several blocks' rows: one 16-wide block's row
    # alone can measure as nothing at these short settings on a noisy host)
    full = compose("build_lut", ET, BuildLUTConfig).space.max_spec(10)
    emptied = full
    for i in range(1, len(full.stages)):
        emptied = emptied.with_stage(i, StageSpec(16, ()))
    assert table.predict(full) > table.predict(emptied) > 0


def blocked_python(root: Path, allow: set[str]) -> Path:
    """A venv that sees this environment's packages (no copies, no network) but may import only `allow` and what
    they import themselves: this package and every other third-party package fail to import."""
    import sysconfig

    root.mkdir(parents=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    py = root / "venv" / "bin" / "python"
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True)
    site_dir = Path(site.stdout.strip())
    blocked = [
        "nas",
        "supernet",
        "latency_lut",
        "search_configs",
        "onnxruntime",
        "coremltools",
        "timm",
        "hydra",
        "omegaconf",
        "pandas",
        "sklearn",
        "scipy",
        "matplotlib",
    ]
    (site_dir / "_only_allowed.py").write_text(
        "import importlib.abc, importlib.util, sys\n"
        f"BLOCKED = {sorted(set(blocked) - allow)!r}\n"
        "class Refuse(importlib.abc.Loader):  # found (torch probes names), but importing it fails\n"
        "    def create_module(self, spec):\n"
        "        raise ModuleNotFoundError(f'No module named {spec.name!r}')\n"
        "    def exec_module(self, module):\n"
        "        pass\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            return importlib.util.spec_from_loader(name, Refuse())\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    deps = sysconfig.get_paths()["purelib"]  # a plain path line: its .pth files (the editable install) do not run
    (site_dir / "zz_deps.pth").write_text(f"import _only_allowed\n{deps}\n")
    return py


@pytest.mark.slow
def test_executorch_bundle_round_trip_without_this_package(tmp_path):
    bundle = tmp_path / "bundle"
    build_lut(compose("build_lut", [*ET, f"bundle={bundle}"], BuildLUTConfig))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runtime"] == "executorch" and all(it["file"].endswith(".pte") for it in manifest["items"])
    py = blocked_python(tmp_path / "iso", allow=set())
    for module in ("nas", "onnxruntime", "pandas"):
        probe = subprocess.run([py, "-c", f"import {module}"], cwd=bundle, capture_output=True, text=True)
        assert probe.returncode != 0, module
    run = subprocess.run([py, "measure.py"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (
        manifest["sentinel"]["file"].endswith(".pte")
        and "group passes ran slow (sentinel > 10% over its median)" in run.stdout
    )
    timings = pd.read_csv(bundle / "timings.csv")
    assert timings["runtime"].str.startswith("executorch=").all()
    assert set(timings["item"]) == {it["id"] for it in manifest["items"]}
    imported = tmp_path / "imported.csv"
    build_lut(compose("build_lut", [f"from_bundle={bundle}", f"out={imported}"], BuildLUTConfig))
    table = LatencyTable.load(imported)
    assert table.meta["backend"] == "executorch" and table.calibration is not None
    # the imported rows are the bundle's timings, combined as a local build combines them: the call row is the
    # fastest pass of the call model's statistic, read against the sentinel (the table itself may predict from the
    # rows as timed, when those explain its calibration networks better: LatencyTable reading="auto")
    call = timings[timings["item"] == "call"]["ms"].min()
    sentinel = LatencyTable.load(imported, reading="sentinel")
    assert sentinel.call_ms == pytest.approx(call) and np.isfinite(table.df["ms"]).all()
