import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latency_lut.measure import space_rows
from latency_lut.table import COLUMNS, LatencyTable, LUTError, Row, spec_rows
from nas.arch import PRESETS, ArchSpec, StageSpec
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.config import compose

ROOT = Path(__file__).resolve().parent.parent
SMALL_SPACE = [
    "space.depths=[1,1,2,2]",
    "space.widths=[16,16,32,32]",
    "space.input_size=32",
    "space.attention.key_dim=8",
    "space.attention.num_heads=2",
]
FAST = ["measure.warmup=1", "measure.rounds=2", "measure.runs_per_round=2", "measure.interleave=4"]


def fake_table(rows: list[Row], **meta) -> pd.DataFrame:
    """A LUT whose row i costs exactly i + 1 ms (so any sum is checkable by hand)."""
    m = {
        "backend": "torch",
        "device": "test",
        "versions": "torch=x",
        "threads": 1,
        "batch": 1,
        "input_size": 32,
        **meta,
    }
    return pd.DataFrame(
        [
            {
                "kind": r.kind,
                "stage": r.stage,
                "in_width": r.in_width,
                "width": r.width,
                "resolution": r.resolution,
                "ms": i + 1.0,
                "p25_ms": i + 0.5,
                "p75_ms": i + 1.5,
                "runs": 10,
                **m,
            }
            for i, r in enumerate(rows)
        ]
    )[COLUMNS]


def small_space():
    return compose("build_lut", SMALL_SPACE, BuildLUTConfig).space


def test_spec_rows_of_l1_by_hand():
    rows = spec_rows(PRESETS["l1"])
    kinds = [r.kind for r in rows]
    assert kinds.count("stem") == 1 and kinds.count("embed") == 3 and kinds.count("head") == 1
    assert kinds.count("mb4d") == 14 and kinds.count("mb3d") == 1 and kinds.count("flat") == 1
    assert kinds.count("unflat") == 0 and len(rows) == 21
    assert Row("embed", 3, 224, 448, 14) in rows and Row("mb3d", 3, 448, 448, 7) in rows


def test_predict_is_the_hand_summed_rows():
    space = small_space()
    rows = space_rows(space, 10)
    table = LatencyTable(fake_table(rows))
    cost = {r.key: i + 1.0 for i, r in enumerate(rows)}
    spec = ArchSpec(
        stages=(StageSpec(16, ("4d",)), StageSpec(16, ()), StageSpec(32, ("4d", "3d")), StageSpec(16, ("4d",))),
        input_size=32,
        num_classes=10,
        attention={"key_dim": 8, "num_heads": 2},
    ).validate()
    by_hand = (
        cost[("stem", 0, 8, 16)]
        + cost[("mb4d", 0, 16, 16)]
        + cost[("embed", 1, 16, 16)]
        + cost[("embed", 2, 16, 32)]
        + cost[("mb4d", 2, 32, 32)]
        + cost[("flat", 2, 32, 32)]
        + cost[("mb3d", 2, 32, 32)]
        + cost[("unflat", 2, 32, 32)]
        + cost[("embed", 3, 32, 16)]
        + cost[("mb4d", 3, 16, 16)]
        + cost[("flat", 3, 16, 16)]
        + cost[("head", 3, 16, 10)]
    )
    assert table.predict(spec) == by_hand
    every = {r.key for r in rows}
    for s in [spec, space.max_spec(10)]:
        assert {r.key for r in spec_rows(s)} <= every  # space_rows covers the space


def test_predict_refuses_uncovered_specs():
    space = small_space()
    table = LatencyTable(fake_table(space_rows(space, 10)))
    wide = space.max_spec(10).with_stage(3, StageSpec(48, ("4d",)))
    with pytest.raises(LUTError, match=r"lacks \d+ row\(s\).*48"):
        table.predict(wide)
    assert all("48" in str(r) for r in table.missing(wide))
    with pytest.raises(LUTError, match="input size 32"):
        table.predict(space.max_spec(10).replace(input_size=64))
    with pytest.raises(LUTError, match="head"):
        table.predict(space.max_spec(100))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.assign(ms=d["ms"].where(d.index != 3, np.nan)), "'ms' has a missing"),
        (lambda d: d.assign(ms=d["ms"].where(d.index != 2, -1.0)), "negative"),
        (lambda d: pd.concat([d, d.iloc[[0]]]), "duplicate"),
        (lambda d: d.drop(columns=["p25_ms"]), "missing column"),
        (lambda d: d.assign(backend=["torch"] * (len(d) - 1) + ["onnxruntime"]), "disagree on 'backend'"),
        (lambda d: d.assign(kind=d["kind"].where(d.index != 0, "conv")), "unknown kind"),
        (lambda d: d.assign(stage=d["stage"].astype(str).where(d.index != 1, "x")), "'stage' has a missing or non"),
    ],
)
def test_load_validates(tmp_path, mutate, match):
    df = mutate(fake_table(space_rows(small_space(), 10)))
    p = tmp_path / "lut.csv"
    df.to_csv(p, index=False)
    with pytest.raises(LUTError, match=match):
        LatencyTable.load(p)


def test_malformed_csv_cli_one_line(tmp_path):
    p = tmp_path / "lut.csv"
    p.write_text("kind,stage\nstem,0\n")
    r = subprocess.run(
        [sys.executable, "-m", "nas.validate_lut", f"lut={p}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "missing column" in r.stderr


def test_build_lut_torch_then_resume(tmp_path):
    out = tmp_path / "lut.csv"
    cfg = compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}"], BuildLUTConfig)
    build_lut(cfg)
    table = LatencyTable.load(out)
    rows = space_rows(cfg.space, 10)
    assert len(table.df) == len(rows) and (table.df["ms"] > 0).all()
    assert (table.df["runs"] == 4).all() and (table.df["p25_ms"] <= table.df["p75_ms"]).all()
    assert table.meta["backend"] == "torch" and table.meta["threads"] == 1 and table.meta["input_size"] == 32
    table.predict(cfg.space.max_spec(10))
    # resume: drop 5 rows; a re-run measures only those and keeps every other value as it was
    kept = table.df.iloc[5:]
    kept.to_csv(out, index=False)
    build_lut(cfg)
    again = LatencyTable.load(out).df.set_index(["kind", "stage", "in_width", "width"])
    before = kept.set_index(["kind", "stage", "in_width", "width"])
    assert len(again) == len(rows)
    assert (again.loc[before.index, "ms"] == before["ms"]).all()
    # a file measured with other settings is refused, not mixed
    with pytest.raises(LUTError, match="threads"):
        build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}", "threads=2"], BuildLUTConfig))


def test_build_lut_onnxruntime(tmp_path):
    out = tmp_path / "ort.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, "backend=onnxruntime", f"out={out}"], BuildLUTConfig))
    t = LatencyTable.load(out)
    assert t.meta["backend"] == "onnxruntime" and "onnxruntime=" in t.meta["versions"] and (t.df["ms"] > 0).all()


def test_coreml_timing_on_linux_is_one_clear_line():
    if sys.platform == "darwin":
        pytest.skip("on macOS coreml timing is available")
    r = subprocess.run(
        [sys.executable, "-m", "nas.build_lut", "backend=coreml", *SMALL_SPACE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "timing needs macOS" in r.stderr


@pytest.mark.slow
def test_coreml_convert_only_converts_every_block(tmp_path):
    out = tmp_path / "compat.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, "backend=coreml", "convert_only=true", f"out={out}"], BuildLUTConfig))
    report = pd.read_csv(out)
    assert len(report) == len(space_rows(small_space(), 10)) and report["converted"].all()


def test_cuda_backend_without_gpu_is_clear():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from latency_lut.backends import BackendError, make_backend

    with pytest.raises(BackendError, match="no CUDA device"):
        make_backend("cuda").setup()


def test_validate_lut_end_to_end(tmp_path):
    lut = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}"], BuildLUTConfig))
    from nas.validate_lut import ValidateLUTConfig
    from nas.validate_lut import run as validate

    df = validate(compose("validate_lut", [*SMALL_SPACE, *FAST, f"lut={lut}", "samples=5"], ValidateLUTConfig))
    assert len(df) == 5 and (df["measured_ms"] > 0).all() and (df["predicted_ms"] > 0).all()
    assert set(df.attrs["raw"]) == {"median_abs_pct_err", "within_10pct", "spearman", "median_signed_pct_err"}
    assert (tmp_path / "validation.png").stat().st_size > 1000 and (tmp_path / "validation.csv").is_file()
