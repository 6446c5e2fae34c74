import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latency_lut.backends import Backend
from latency_lut.measure import space_rows
from latency_lut.table import (
    LatencyTable,
    LUTError,
    Row,
    decode_stages,
    encode_fingerprint,
    encode_stages,
    fingerprint,
    spec_rows,
)
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.config import compose
from nas.validate_lut import ValidateLUTConfig
from nas.validate_lut import run as validate
from supernet.arch import PRESETS, ArchSpec, StageSpec
from tests.helpers import FAST, SMALL_SPACE, fake_table, small_space

ROOT = Path(__file__).resolve().parent.parent


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
        (lambda d: d.assign(weights=[10.0] * (len(d) - 1) + [-1.0]), "'weights' has a negative or non-numeric"),
        (lambda d: d.assign(weights=["x"] + [10.0] * (len(d) - 1)), r"'weights' .* non-numeric value on line 2"),
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


def test_build_lut_torch_then_resume(tmp_path, caplog):
    import logging

    from latency_lut.build import calibration_nets
    from latency_lut.measure import CALL, plan_groups

    out = tmp_path / "lut.csv"
    # rebuilds=0: this is about resuming; a rebuild (an unsteady build, tested on its own) measures everything again
    cfg = compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}", "rebuilds=0"], BuildLUTConfig)
    with caplog.at_level(logging.INFO, logger="latency_lut.build"):
        build_lut(cfg)
    # the host gate timed its sentinel in every pass of every group of the build
    group_passes = len(plan_groups([*space_rows(cfg.space, 10), *calibration_nets(cfg), CALL], cfg.measure)) * 2
    assert f"of {group_passes} group passes ran slow (sentinel > 10% over its median)" in caplog.text
    table = LatencyTable.load(out)
    rows = space_rows(cfg.space, 10)
    kinds = table.df["kind"]
    nets = table.df[kinds == "net"]  # 4 calibration networks x 3 visits, one row each
    assert (kinds == "call").sum() == 1 and len(nets) == 12 and len(table.df) == len(rows) + 13
    assert sorted(zip(nets["in_width"], nets["width"])) == [(k, v) for k in range(4) for v in range(3)]
    assert (table.df["runs"] == 8).all() and (table.df["p25_ms"] <= table.df["p75_ms"]).all()
    assert table.meta["backend"] == "torch" and table.meta["threads"] == 1 and table.meta["input_size"] == 32
    assert table.calibration is not None and table.calibration.n == 4 and "on 4 networks" in table.describe()
    assert table.fingerprint["attention.key_dim"] == "8" and table.width_step == 16
    table.predict(cfg.space.max_spec(10))
    # resume: drop 5 rows; a re-run measures only those and keeps every other value as it was
    kept = table.df.iloc[5:]
    kept.to_csv(out, index=False)
    build_lut(cfg)
    again = LatencyTable.load(out).df.set_index(["kind", "stage", "in_width", "width"])
    before = kept.set_index(["kind", "stage", "in_width", "width"])
    assert len(again) == len(rows) + 13
    assert (again.loc[before.index, "ms"] == before["ms"]).all()
    # a file measured with other settings is refused, not mixed
    with pytest.raises(LUTError, match="threads"):
        build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}", "threads=2"], BuildLUTConfig))
    with pytest.raises(LUTError, match="fingerprint"):
        build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}", "space.mlp_ratio=2.0"], BuildLUTConfig))


def test_build_lut_onnxruntime(tmp_path):
    out = tmp_path / "ort.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, "backend=onnxruntime", f"out={out}"], BuildLUTConfig))
    t = LatencyTable.load(out)
    assert t.meta["backend"] == "onnxruntime" and "onnxruntime=" in t.meta["versions"]
    assert t.call_ms > 0 and (t.df[t.df["kind"] == "net"]["ms"] > t.call_ms).all()


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

    table = LatencyTable.load(lut)
    cfg = compose(
        "validate_lut", [*SMALL_SPACE, *FAST[:-1], f"lut={lut}", "samples=6", "action_pairs=3"], ValidateLUTConfig
    )
    df = validate(cfg)
    fit_set = {a for a in table.df["arch"].dropna() if a}
    assert len(df) == 6 and not set(df["arch"]) & fit_set  # held out from the calibration networks
    assert list(df["kind"]).count("uniform") == 3
    base = table.base_spec()
    specs = [decode_stages(a, base) for a in df["arch"]]
    # predictions are the table's own: calibrated raw sums, the raw sum a hand sum over the spec's rows
    by_hand = [
        sum(table.df.set_index(["kind", "stage", "in_width", "width"]).loc[r.key, table.column] for r in spec_rows(s))
        for s in specs
    ]
    assert np.allclose(df["raw_ms"], np.array(by_hand) + table.call_ms)
    assert np.allclose(df["predicted_ms"], [table.predict(sp) for sp in specs])
    assert set(df.attrs) >= {"calibrated", "raw", "recalibrated", "drift", "actions"}
    assert (df["drift"] > 0).all()  # the figures themselves are checked on scripted timings below
    actions = pd.read_csv(tmp_path / "actions.csv")
    assert set(actions["action"]) <= {"drop_path", "narrow_stage", "remove_mb3d"} and len(actions) >= 3
    assert (tmp_path / "validation.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- calibration
def calibrated_table(scale: float, call: float = 0.25) -> tuple[LatencyTable, list[ArchSpec]]:
    """The fake table plus a `call` row and three `net` rows measuring exactly `ratios` x their raw sums."""
    space = small_space()
    rows = space_rows(space, 10)
    fp = encode_fingerprint(fingerprint(space.max_spec(10), 16))
    df = fake_table(rows).assign(fingerprint=fp, arch="")
    plain = LatencyTable(df)
    nets = [
        space.max_spec(10),
        space.max_spec(10).with_stage(2, StageSpec(16, ("3d",))),
        space.max_spec(10).with_stage(0, StageSpec(16, ())),
    ]
    ratios = [scale * 0.9, scale, scale * 1.3]  # median: scale
    extra = [dict(df.iloc[0], kind="call", stage=0, in_width=0, width=0, resolution=0, ms=call)]
    for k, (s, r) in enumerate(zip(nets, ratios)):
        extra.append(
            dict(
                df.iloc[0],
                kind="net",
                stage=3,
                in_width=k,
                width=0,
                ms=r * (plain.raw(s) + call),
                arch=encode_stages(s),
            )
        )
    return LatencyTable(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)), nets


def test_calibration_fit_and_predict_against_a_hand_computed_oracle():
    table, nets = calibrated_table(scale=1.5)
    assert table.calibration.n == 3 and table.calibration.scale == pytest.approx(1.5)
    assert table.call_ms == 0.25
    cost = {r.key: i + 1.0 for i, r in enumerate(space_rows(small_space(), 10))}
    spec = small_space().max_spec(10).with_stage(3, StageSpec(16, ("4d",)))
    raw = sum(cost[r.key] for r in spec_rows(spec)) + 0.25
    assert table.raw(spec) == pytest.approx(raw)
    assert table.predict(spec) == pytest.approx(1.5 * raw)
    assert table.predict(spec, calibrated=False) == pytest.approx(raw)
    assert [s for s, _ in table.networks()] == nets  # the stored arch strings round-trip


def test_a_network_slow_on_one_visit_keeps_its_median():
    table, nets = calibrated_table(scale=1.5)
    df = table.df
    net0 = df[(df["kind"] == "net") & (df["in_width"] == 0)].iloc[0]
    ms0 = float(net0["ms"])
    # two more visits of network 0: one caught in a slow period (+40%), one 2% fast; its median is the 1st visit
    visits = [dict(net0, width=1, ms=ms0 * 1.4), dict(net0, width=2, ms=ms0 * 0.98)]
    t = LatencyTable(pd.concat([df, pd.DataFrame(visits)], ignore_index=True))
    assert [s for s, _ in t.networks()] == nets and t.networks()[0][1] == pytest.approx(ms0)
    assert t.calibration.n == 3 and t.calibration.scale == pytest.approx(1.5)
    bad = dict(net0, width=3, arch=encode_stages(nets[1]))
    with pytest.raises(LUTError, match="visits of calibration network 0 disagree"):
        LatencyTable(pd.concat([df, pd.DataFrame([bad])], ignore_index=True)).networks()


def test_plan_spreads_the_visits_of_a_calibration_network_over_the_build():
    from latency_lut.measure import CALL, MeasureConfig, Net, plan_groups

    space = small_space()
    spec = space.max_spec(10)
    rows = space_rows(space, 10)
    nets = [Net(k, spec, v) for v in range(3) for k in range(4)]
    groups = plan_groups([*rows, *nets, CALL], MeasureConfig(interleave=8))
    flat = [it for g in groups for it in g]
    where = {(it.index, it.visit): flat.index(it) for it in flat if isinstance(it, Net)}
    assert sorted(where) == [(k, v) for k in range(4) for v in range(3)]
    # visit v lies in the v-th third of the plan's time: every visit 0 before every visit 1 before every visit 2
    for v in (0, 1):
        assert max(p for (_, w), p in where.items() if w == v) < min(p for (_, w), p in where.items() if w == v + 1)
    assert min(where.values()) < len(flat) / 3 < 2 * len(flat) / 3 < max(where.values())


def test_uncalibrated_table_loads_and_says_so(tmp_path):
    df = fake_table(space_rows(small_space(), 10))
    p = tmp_path / "old.csv"
    df.to_csv(p, index=False)  # a table written before calibration and fingerprints existed
    t = LatencyTable.load(p)
    spec = small_space().max_spec(10)
    assert t.calibration is None and "uncalibrated" in t.describe() and t.predict(spec) == t.raw(spec)


def test_imported_table_keeps_its_own_calibration(tmp_path):
    table, _ = calibrated_table(scale=0.8)
    p = tmp_path / "from_another_machine.csv"
    table.df.assign(device="Apple A14").to_csv(p, index=False)
    again = LatencyTable.load(p)
    assert again.calibration.scale == pytest.approx(0.8) and again.meta["device"] == "Apple A14"


# ---------------------------------------------------------------------------------------------- fingerprint
@pytest.mark.parametrize(
    "change, field",
    [
        (dict(attention={"key_dim": 16, "num_heads": 2}), "attention.key_dim"),
        (dict(attention={"key_dim": 8, "num_heads": 4}), "attention.num_heads"),
        (dict(attention={"key_dim": 8, "num_heads": 2, "attn_ratio": 4.0}), "attention.attn_ratio"),
        (dict(mlp_ratio=2.0), "mlp_ratio"),
        (dict(pool_size=5), "pool_size"),
        (dict(in_chans=1), "in_chans"),
        (dict(stem_width=16), "stem_width"),
    ],
)
def test_fingerprint_refuses_a_spec_with_other_block_settings(change, field):
    table, _ = calibrated_table(scale=1.0)
    spec = small_space().max_spec(10)
    table.predict(spec)  # the matching spec is priced
    with pytest.raises(LUTError, match=rf"measured with {field}=.*needs {field}="):
        table.predict(spec.replace(**change))


def test_slim_coverage_check_follows_the_width_step():
    from nas.search.loading import check_lut_covers
    from supernet.supernet import SuperNet

    table, _ = calibrated_table(scale=1.0)
    net = SuperNet(small_space(), num_classes=10)
    check_lut_covers(table, net, 16)
    check_lut_covers(table, net, 32)  # 32-steps are a subset of the 16-steps measured
    with pytest.raises(LUTError, match="width step 8"):
        check_lut_covers(table, net, 8)
    other = SuperNet(small_space().__class__(**{**vars(small_space()), "mlp_ratio": 2.0}), num_classes=10)
    with pytest.raises(LUTError, match="mlp_ratio"):
        check_lut_covers(table, other, 16)


# ------------------------------------------------------------------------------------ rows from the model
def test_row_inputs_have_the_layout_the_network_gives_them(tiny_spec):
    """Oracle: forward pre-hooks on every layer module of a whole fused network record what each layer really
    receives; the row measured for that layer must get a tensor of the same shape, strides and dtype."""
    import torch

    from latency_lut.measure import row_module
    from supernet import build_model

    model = build_model(tiny_spec).eval().fuse()
    seen = []
    mods = model.layer_modules()
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for m in mods[:-1]]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = x
        for m in mods:
            out = m(out)
        assert torch.equal(out, model(x))  # the layer modules, applied in turn, are the network
    for h in hooks:
        h.remove()
    seen = seen[: len(mods) - 1]
    head_in = model.forward_features(x)  # what the head view receives: the final tokens, before the norm
    plan = spec_rows(tiny_spec)
    assert len(plan) == len(mods)
    for row, inside in zip(plan, seen + [head_in]):
        module, fed = row_module(row, tiny_spec, batch=1)
        assert type(module) is type(mods[plan.index(row)]), row
        assert fed.shape == inside.shape and fed.stride() == inside.stride() and fed.dtype == inside.dtype, row
        assert fed.is_contiguous() == inside.is_contiguous(), row


def test_layer_plan_is_what_the_network_runs(tiny_spec):
    """Oracle: hooks on the block classes record which layers a forward pass executes, in order."""
    import torch

    from supernet import build_model
    from supernet.blocks import MB3D, MB4D, Embedding, Flat, Stem, Unflat

    model = build_model(tiny_spec).eval()
    ran = []
    names = {Stem: "stem", Embedding: "embed", MB4D: "mb4d", MB3D: "mb3d", Flat: "flat", Unflat: "unflat"}
    for m in model.modules():
        if type(m) in names:
            m.register_forward_hook(lambda m, a, o: ran.append(names[type(m)]))
    model.head.register_forward_hook(lambda m, a, o: ran.append("head"))
    model(torch.randn(1, 3, 64, 64))
    assert ran == [r.kind for r in spec_rows(tiny_spec)]


@pytest.mark.gpu
def test_build_and_validate_a_cuda_lut(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    lut = tmp_path / "cuda.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, "backend=cuda", f"out={lut}"], BuildLUTConfig))
    t = LatencyTable.load(lut)
    assert (
        t.meta["backend"] == "cuda"
        and "cuda=" in t.meta["versions"]
        and t.meta["device"] == torch.cuda.get_device_name()
    )
    assert t.calibration is not None and (t.df[t.df["kind"] == "net"]["ms"] > 0).all()

    df = validate(
        compose(
            "validate_lut", [*SMALL_SPACE, *FAST[:-1], f"lut={lut}", "samples=6", "action_pairs=2"], ValidateLUTConfig
        )
    )
    assert len(df) == 6 and (df["measured_ms"] > 0).all()


@pytest.mark.gpu
def test_the_cuda_backend_replays_a_captured_graph_that_computes_the_eager_output(tiny_spec):
    import torch

    from latency_lut.backends import CudaBackend
    from supernet import build_model

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = build_model(tiny_spec).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        eager = model(x)
    backend = CudaBackend()
    backend.setup()
    runner = backend.prepare(model, x)
    out = runner()
    torch.cuda.synchronize()
    assert torch.allclose(out.cpu(), eager, atol=1e-3, rtol=1e-3)
    times = backend.time(runner, 20)
    assert len(times) == 20 and min(times) > 0


def test_passes_combine_fastest_for_networks_and_median_for_rows():
    from latency_lut.measure import combine_passes

    passes = [{"ms": v, "p25_ms": v - 0.1, "p75_ms": v + 0.1, "runs": 10} for v in (2.0, 1.0, 5.0)]
    assert combine_passes(passes, whole=True)["ms"] == 1.0  # interference only slows a network: fastest pass
    row = combine_passes(passes, whole=False)
    assert row["ms"] == 2.0 and row["p25_ms"] == 1.9 and row["runs"] == 30  # a difference: the median pass


def test_rows_record_their_weights_which_add_up_to_each_whole_network(tmp_path):
    """Every layer row records the floats its fused module reads; a network's weights by the table (the sum of its
    rows') equal those of the whole fused network, counted from its own state_dict, for every calibration network.
    A table written before the column loads without them (the memory correction is not tried), and
    recalibrate=true records them, the same figures, without re-timing a row."""
    from supernet import build_model

    lut, eight = tmp_path / "lut.csv", [*FAST, "calibration_networks=8"]  # enough networks to try `memory`
    build_lut(compose("build_lut", [*SMALL_SPACE, *eight, f"out={lut}"], BuildLUTConfig))
    table = LatencyTable.load(lut)
    assert "memory" in dict(table.calibration.candidates)
    kinds = table.df["kind"]
    assert (table.df.loc[kinds.isin(["stem", "embed", "mb4d", "mb3d", "head"]), "weights"] > 0).all()
    assert (table.df.loc[kinds.isin(["flat", "unflat", "call"]), "weights"] == 0).all()  # reshapes hold none
    for spec, _ in table.networks():
        fused = build_model(spec).eval().fuse().state_dict()
        count = sum(t.numel() for t in fused.values() if t.is_floating_point())
        assert table.weights(spec) * 1e6 == count
    older = tmp_path / "older.csv"
    table.df.drop(columns="weights").to_csv(older, index=False)
    old = LatencyTable.load(older)
    assert old.weights(table.networks()[0][0]) is None and "memory" not in dict(old.calibration.candidates)
    build_lut(compose("build_lut", [*SMALL_SPACE, *eight, f"out={older}", "recalibrate=true"], BuildLUTConfig))
    again = LatencyTable.load(older)
    assert (again.df["weights"] == table.df["weights"]).all() and "memory" in dict(again.calibration.candidates)
    layers = again.df["kind"] != "net"
    assert (again.df.loc[layers, "ms"] == table.df.loc[layers, "ms"]).all()  # no row was timed again


def test_recalibrate_re_times_only_the_calibration_networks(tmp_path):
    lut = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}"], BuildLUTConfig))
    before = LatencyTable.load(lut).df.set_index(["kind", "stage", "in_width", "width"])
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}", "recalibrate=true"], BuildLUTConfig))
    after = LatencyTable.load(lut).df.set_index(["kind", "stage", "in_width", "width"])
    nets = after.index.get_level_values("kind") == "net"
    assert (after.loc[~nets, "ms"] == before.loc[~nets, "ms"]).all()  # the rows stay
    assert (after.loc[nets, "ms"] != before.loc[nets, "ms"]).any()  # the networks were timed again
    with pytest.raises(LUTError, match="no LUT at out="):
        build_lut(
            compose(
                "build_lut", [*SMALL_SPACE, *FAST, f"out={tmp_path / 'none.csv'}", "recalibrate=true"], BuildLUTConfig
            )
        )


def test_validation_without_action_pairs_has_no_sign_figures(tmp_path, capsys):
    """action_pairs=0 (whole networks only, as for a large space) used to crash on the empty action table."""
    import math

    lut = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}"], BuildLUTConfig))
    over = [*SMALL_SPACE, *FAST[:-1], f"lut={lut}", "samples=4", "action_pairs=0"]
    df = validate(compose("validate_lut", over, ValidateLUTConfig))
    assert len(df) == 4 and df.attrs["actions"]["pairs"] == 0 and math.isnan(df.attrs["actions"]["sign_agree"])
    assert "none measured (action_pairs=0)" in capsys.readouterr().out


def test_adaptive_rounds_stop_once_settled_and_not_before():
    """A backend whose timings never change settles after min_rounds (3 rounds give the two round-to-round
    changes the rule needs); one whose timings keep drifting by 5% per round runs every round."""
    import random

    from latency_lut.backends import Backend
    from latency_lut.measure import MeasureConfig, measure_interleaved

    class Fake(Backend):
        def __init__(self, step: float):
            super().__init__(1)
            self.t, self.step = 1.0, step

        def time(self, runner, n):
            self.t *= 1 + self.step
            return [self.t] * n

    cfg = MeasureConfig(warmup=0, rounds=20, runs_per_round=2, min_rounds=3, settle_pct=1.0)
    steady = measure_interleaved(["a", "b"], lambda _: lambda: None, Fake(0.0), cfg, random.Random(0))
    assert [s["runs"] for s in steady] == [6, 6]
    drifting = measure_interleaved(["a", "b"], lambda _: lambda: None, Fake(0.05), cfg, random.Random(0))
    assert [s["runs"] for s in drifting] == [40, 40]
    fixed = MeasureConfig(warmup=0, rounds=20, runs_per_round=2)  # min_rounds=0: the fixed method
    assert [
        s["runs"] for s in measure_interleaved(["a"], lambda _: lambda: None, Fake(0.0), fixed, random.Random(0))
    ] == [40]


class ScriptedTimes(Backend):
    """A backend whose 'measurement' of a network is known: a held-out network takes `predict x 1.05` or
    `predict x 1.25` (by its widths), a calibration network `drift x` its build-time latency."""

    def __init__(self, table: LatencyTable, drift: float):
        super().__init__(1)
        self.table, self.drift = table, drift
        self.refs = {encode_stages(s): ms for s, ms in table.networks()}

    @staticmethod
    def factor(spec: ArchSpec) -> float:
        return 1.25 if sum(spec.widths) // 16 % 3 == 0 else 1.05

    def prepare(self, spec, x):
        key = encode_stages(spec)
        ms = self.refs[key] * self.drift if key in self.refs else self.table.predict(spec) * self.factor(spec)
        return lambda: ms

    def time(self, runner, n):
        return [runner()] * n


def test_validation_figures_against_scripted_timings(tmp_path, monkeypatch):
    """The validator's figures from timings known in advance: the share within +-10%, the median and worst
    error, and the drift its reference networks read, each computed here from the script."""
    import latency_lut.measure as measure
    import latency_lut.validation as validation

    lut = tmp_path / "lut.csv"
    calibrated_table(scale=1.5)[0].df.to_csv(lut, index=False)
    table = LatencyTable.load(lut)
    backend = ScriptedTimes(table, drift=1.2)
    monkeypatch.setattr(measure, "network_module", lambda spec, batch: (spec, None))
    monkeypatch.setattr(validation, "make_backend", lambda *a, **k: backend)
    cfg = compose("validate_lut", [*SMALL_SPACE, f"lut={lut}", "samples=12", "action_pairs=0"], ValidateLUTConfig)
    v = validation.validate_lut(cfg)
    specs = [decode_stages(a, table.base_spec()) for a in v.networks["arch"]]
    factors = np.array([ScriptedTimes.factor(s) for s in specs])
    assert 0 < (factors == 1.05).sum() < len(factors)  # both kinds of network are held out
    err = np.abs(1 / factors - 1) * 100  # |predicted - measured| / measured, by hand
    f = v.figures["calibrated"]
    assert f["within_10pct"] == pytest.approx(np.mean(factors == 1.05))
    assert f["median_abs_pct_err"] == pytest.approx(np.median(err)) and f["worst_abs_pct_err"] == pytest.approx(20.0)
    # the references ran 1.2x their build-time latency: every group reads that drift, and 'recalibrated now'
    # compares predict x 1.2 with the measurement
    assert v.figures["drift"] == pytest.approx(0.2) and np.allclose(v.networks["drift"], 1.2)
    assert v.figures["recalibrated"]["within_10pct"] == pytest.approx(np.mean(np.abs(1.2 / factors - 1) <= 0.1))
    # read again from the kept measurements, nothing timed (how benchmarks compare tables of one build): the drift
    # comes back from the references' stored ms against the table's calibration networks
    cal, now = validation.reread(table, v.networks)
    assert cal["within_10pct"] == pytest.approx(np.mean(factors == 1.05))
    assert now["within_10pct"] == pytest.approx(np.mean(np.abs(1.2 / factors - 1) <= 0.1))
    assert now["worst_abs_pct_err"] == pytest.approx(np.max(np.abs(1.2 / factors - 1)) * 100, rel=1e-4)
    # no group ran as during the build (every one drifted 20%): there are no 'steady groups' figures; with no drift,
    # every group is steady and those figures are the as-built ones
    assert "steady" not in v.figures and "steady groups" not in v.report().split("machine drift")[0]
    monkeypatch.setattr(validation, "make_backend", lambda *a, **k: ScriptedTimes(table, drift=1.0))
    still = validation.validate_lut(cfg).figures
    assert still["steady"] == {**still["calibrated"], "networks": 12}


@pytest.mark.timing
def test_validation_times_networks_as_a_plain_loop_does(tmp_path):
    """The validator's measurement against an independent one: the largest and the smallest of its held-out
    networks, timed alternately by a plain loop, stand in about the ratio the validator measured (a relative
    figure measured side by side, so the speed of this CPU does not matter)."""
    import time

    import torch

    from supernet import build_model

    lut = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={lut}"], BuildLUTConfig))
    cfg = compose("validate_lut", [*SMALL_SPACE, f"lut={lut}", "samples=8", "action_pairs=0"], ValidateLUTConfig)
    df = validate(cfg)
    table = LatencyTable.load(lut)
    lo, hi = df["raw_ms"].idxmin(), df["raw_ms"].idxmax()
    models = [build_model(decode_stages(df.loc[i, "arch"], table.base_spec())).eval().fuse() for i in (lo, hi)]
    x = torch.randn(1, 3, 32, 32)
    torch.set_num_threads(1)
    samples: list[list[float]] = [[], []]
    with torch.inference_mode():
        for _ in range(30):  # alternate, so that a slow period of the host hits both
            for k, m in enumerate(models):
                m(x)
                t0 = time.perf_counter()
                for _ in range(10):
                    m(x)
                samples[k].append(time.perf_counter() - t0)
    loop_ratio = np.percentile(samples[1], 25) / np.percentile(samples[0], 25)
    validator_ratio = df.loc[hi, "measured_ms"] / df.loc[lo, "measured_ms"]
    assert validator_ratio == pytest.approx(loop_ratio, rel=0.35)


def test_an_unsteady_build_is_built_again_and_the_steadier_kept(tmp_path, monkeypatch):
    """A build whose calibration visits varied more than rebuild_above is built again from scratch; the steadier
    table becomes out=, the other is kept beside it. The calibration networks' timings are scripted (visit 1 of
    every network slowed by a set factor per build), so each build's variation is known by hand: a factor f gives
    (f - 1) / 1, the median visit being the unslowed one."""
    import latency_lut.build as build
    from latency_lut.measure import Net

    real = build.measure_items
    factors = iter([1.5, 1.05])  # the first build varies by 50%, the rebuild by 5%

    def scripted(items, base, backend, cfg, batch, on_group, progress=None):
        f = next(factors)

        def slowed(results):
            out = []
            for item, stats in results:
                if isinstance(item, Net):
                    ms = (1.0 + 0.1 * item.index) * (f if item.visit == 1 else 1.0)
                    stats = {**stats, "ms": ms, "raw_ms": ms, "p25_ms": ms, "p75_ms": ms}
                out.append((item, stats))
            on_group(out)

        return real(items, base, backend, cfg, batch, slowed, progress)

    monkeypatch.setattr(build, "measure_items", scripted)
    out = tmp_path / "lut.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={out}"], BuildLUTConfig))
    kept, aside = LatencyTable.load(out), LatencyTable.load(tmp_path / "lut.unsteady1.csv")
    assert kept.host_variation == pytest.approx(0.05) and aside.host_variation == pytest.approx(0.5)
    assert not (tmp_path / "lut.rebuild1.csv").exists() and len(kept.df) == len(aside.df)

    def built(name: str, slowdowns: list[float], *overrides: str) -> tuple[float, float | None]:
        """Build `name`.csv with each build's visit-1 slowdown scripted; the kept table's variation and the set-aside
        one's (None when nothing was set aside)."""
        nonlocal factors
        factors = iter(slowdowns)
        build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, f"out={tmp_path / name}.csv", *overrides], BuildLUTConfig))
        aside = tmp_path / f"{name}.unsteady1.csv"
        kept = LatencyTable.load(tmp_path / f"{name}.csv").host_variation
        return kept, LatencyTable.load(aside).host_variation if aside.exists() else None

    # a rebuild that varies more keeps the first build
    assert built("second", [1.2, 1.4]) == (pytest.approx(0.2), pytest.approx(0.4))
    # re-running a finished build measures nothing new and does not build again over the build kept aside
    assert built("second", [1.0]) == (pytest.approx(0.2), pytest.approx(0.4))
    # the default threshold is 5% (benchmarks/README.md section 3, run 8): a build varying by 7% is built again,
    # and not once the threshold is set back to 10%; rebuilds=0 never builds again
    assert built("fourth", [1.07, 1.02]) == (pytest.approx(0.02), pytest.approx(0.07))
    assert built("fifth", [1.07], "rebuild_above=0.10") == (pytest.approx(0.07), None)
    assert built("third", [1.3], "rebuilds=0") == (pytest.approx(0.3), None)


def test_a_cpu_build_whose_threads_take_every_core_is_warned_about():
    """threads >= usable cores on a CPU backend warns and names a steadier setting; fewer threads, or a GPU or
    CoreML backend, do not."""
    from latency_lut.build import threads_warning, usable_cores

    warning = threads_warning("onnxruntime", 2, 2)
    assert warning is not None and "threads=2 uses all 2 of this machine's cores" in warning
    assert "threads=1" in warning
    assert "threads=3" in threads_warning("torch", 8, 4)
    assert threads_warning("torch", 1, 2) is None
    assert threads_warning("executorch", 3, 4) is None
    assert threads_warning("cuda", 2, 2) is None
    assert threads_warning("coreml", 1, 1) is None
    assert usable_cores() >= 1
