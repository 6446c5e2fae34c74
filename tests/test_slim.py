"""The slimming engine: actions, scoring, and nas.slim end to end on a small trained supernet."""

import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from latency_lut.table import LatencyTable, LUTError
from nas.build_lut import BuildLUTConfig
from nas.build_lut import run as build_lut
from nas.checkpoint import CheckpointError
from nas.config import ConfigError, compose
from nas.data import DataConfig, build_datasets
from nas.search.evaluator import evaluate
from nas.search.loading import load_weights
from nas.search.slimmer import Slimmer, drop_least_important_path, narrow_least_important_stage, remove_first_mb3d
from nas.search.state import SlimState, UnreachableTarget
from nas.slim import SlimConfig
from nas.slim import run as slim
from supernet import build_model
from supernet.arch import ArchSpec
from tests.test_lut import FAST, SMALL_SPACE

ROOT = Path(__file__).resolve().parent.parent
S = SlimState((("4d", "4d"), ("4d",), ("4d", "3d", "3d"), ("3d", "3d")), (32, 32, 48, 64))
SCORES = [[3.0, 0.5], [9.0], [4.0, 2.0, 7.0], [1.0, 6.0]]


# ------------------------------------------------------------------------------------------- actions
def test_drop_path_takes_the_least_important_active_metapath():
    c = drop_least_important_path(S, SCORES)
    assert c.state.choices[0] == ("4d", "id") and c.where == "stage1.path2" and c.state.widths == S.widths
    c2 = drop_least_important_path(c.state, SCORES)  # the dropped path no longer competes
    assert c2.state.choices[3] == ("id", "3d")
    one = SlimState((("4d",), (), (), ()), (16, 16, 16, 16))
    assert drop_least_important_path(one, [[1.0], [], [], []]) is None  # never empties the network


def test_remove_first_mb3d_in_network_order():
    c = remove_first_mb3d(S)
    assert c.state.choices[2] == ("4d", "id", "3d") and c.state.choices[3] == ("3d", "3d")
    c4 = remove_first_mb3d(S, to="4d")
    assert c4.state.choices[2] == ("4d", "4d", "3d")
    ArchSpec.from_dict(
        {
            "stages": [
                {"width": w, "blocks": [b for b in s if b != "id"]} for w, s in zip(c4.state.widths, c4.state.choices)
            ]
        }
    )  # still a valid suffix
    assert remove_first_mb3d(SlimState((("4d",), ("4d",), ("4d",), ("4d",)), (16,) * 4)) is None


def test_narrow_least_important_stage():
    # stage sums of active paths: 3.5, 9, 13, 7 -> stage 1 is least important
    c = narrow_least_important_stage(S, SCORES)
    assert c.state.widths == (16, 32, 48, 64) and c.where == "stage1: 32->16"
    # stage 1 cannot go below 16: the next least important (stage 4, 7.0) narrows
    c2 = narrow_least_important_stage(c.state, SCORES)
    assert c2.state.widths == (16, 32, 48, 48)


def test_importance_ordering_from_hand_set_alpha_drives_the_drop_order():
    from supernet.supernet import SuperNet
    from tests.test_supernet import SMALL as SPACE

    net = SuperNet(SPACE, num_classes=10)
    with torch.no_grad():  # identity probability rises along stage 3; stage 1 paths are very important
        net.alphas[0].copy_(torch.tensor([[5.0, 0.0], [5.0, 0.0]]))
        net.alphas[1].copy_(torch.tensor([[5.0, 0.0]]))
        net.alphas[2].copy_(torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]]))
        net.alphas[3].copy_(torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))
    scores, _ = net.importance()
    state = SlimState(net.derive(), tuple(SPACE.widths))
    order = []
    for _ in range(3):
        c = drop_least_important_path(state, scores)
        order.append(c.where)
        state = c.state
    assert order == ["stage3.path3", "stage3.path2", "stage3.path1"]


def test_slimmer_applies_the_lowest_drop_per_ms_with_mocked_scores():
    """Mocked latency/accuracy: the action with the lowest accuracy drop per ms wins, a gain beats any drop."""
    start = SlimState((("4d", "4d"), ("4d",), ("3d",), ("3d",)), (32, 32, 32, 32))
    scores = [[1.0, 2.0], [3.5], [4.0], [5.0]]

    def latency(s):  # each block costs 1 ms, each channel-step of 16 costs 0.5 ms
        return s.num_blocks * 1.0 + sum(w // 16 for w in s.widths) * 0.5

    def accuracy(s):
        acc = 0.90
        acc -= 0.004 * (2 - sum(c != "id" for c in s.choices[0]))  # dropping a stage-1 path: 0.4 %/1 ms
        acc -= 0.030 * (sum(c == "3d" for c in s.choices[2] + s.choices[3]) < 2)  # removing MB3D: 3 %/ms
        acc += 0.001 * (s.widths[0] == 16)  # narrowing stage 1 *improves* accuracy: negative score
        acc -= 0.02 * sum(w < 32 for w in s.widths[1:])  # narrowing any other stage: 4 %/ms
        return acc

    slimmer = Slimmer(latency, accuracy, scores)
    traj = slimmer.run(start, target_ms=latency(start) - 2.2)
    assert [t.action for t in traj] == ["start", "narrow_stage", "drop_path", "drop_path"]
    assert traj[1].score < 0 and traj[2].score == pytest.approx(0.4)
    assert traj[-1].latency_ms <= latency(start) - 2.2
    assert all(a.latency_ms > b.latency_ms for a, b in zip(traj, traj[1:]))  # latency only decreases


def test_slimmer_reports_an_unreachable_target():
    start = SlimState((("4d",), (), (), ()), (16, 16, 16, 16))
    with pytest.raises(UnreachableTarget, match="stopped at 1 ms"):
        Slimmer(lambda s: 1.0, lambda s: 0.5, [[1.0], [], [], []]).run(start, 0.5)


# ------------------------------------------------------------------------------------------ end to end
def slim_cfg(trained, out, targets, *extra):
    sn, lut, _ = trained
    return compose(
        "slim",
        [
            f"target_ms={targets}",
            f"supernet={sn}",
            f"lut={lut}",
            f"out={out}",
            "val_images=150",
            "bn_batches=2",
            "batch_size=64",
            "threads=1",
            *extra,
        ],
        SlimConfig,
    )


def test_slim_end_to_end_two_targets(trained, tmp_path):
    _, lut, start_ms = trained
    t_hi, t_lo = round(start_ms * 0.8, 4), round(start_ms * 0.55, 4)
    out = slim(slim_cfg(trained, tmp_path / "out", [t_hi, t_lo]))
    traj = pd.read_csv(out / "trajectory.csv")
    assert traj["step"].tolist() == list(range(len(traj))) and traj["action"].iloc[0] == "start"
    assert (traj["predicted_ms"].diff().dropna() < 0).all()
    assert {"action", "where", "predicted_ms", "val_acc", "score_pct_per_ms"} <= set(traj.columns)
    assert (out / "pareto.png").stat().st_size > 1000
    table = LatencyTable.load(lut)
    for t in (t_hi, t_lo):
        d = out / f"target_{t:g}ms"
        spec = ArchSpec.load(d / "arch.yaml")
        meta = yaml.safe_load((d / "arch.yaml").read_text())["meta"]
        assert table.predict(spec) <= t and meta["predicted_ms"] == pytest.approx(table.predict(spec), abs=1e-5)
        assert meta["lut"]["sha256_16"] == table.sha and meta["lut"]["backend"] == "torch"
        assert meta["depths"] == list(spec.depths) and meta["mb3d_per_stage"] == list(spec.num_3d)
        build_model(spec)  # the emitted config builds
        # inherited weights reproduce the logged accuracy on the held-out validation split
        wspec, model = load_weights(d / "weights.pt")
        assert wspec == spec
        splits = build_datasets(DataConfig(name="digits", input_size=32, val_size=200, augment=False))
        xs = torch.stack([splits.val[i][0] for i in range(150)])
        ys = torch.tensor([splits.val[i][1] for i in range(150)])
        assert evaluate(model, [(xs[:64], ys[:64]), (xs[64:128], ys[64:128]), (xs[128:], ys[128:])]) == meta["val_acc"]
    # deterministic: the same inputs give the same trajectory
    again = slim(slim_cfg(trained, tmp_path / "again", [t_hi, t_lo]))
    pd.testing.assert_frame_equal(pd.read_csv(again / "trajectory.csv"), traj)


def test_target_above_start_emits_unslimmed(trained, tmp_path, caplog):
    _, _, start_ms = trained
    caplog.set_level(logging.INFO)
    out = slim(slim_cfg(trained, tmp_path / "o", [round(start_ms * 2, 3)]))
    traj = pd.read_csv(out / "trajectory.csv")
    assert len(traj) == 1 and "emitting the unslimmed architecture" in caplog.text


def test_target_below_the_space_floor_names_it(trained, tmp_path):
    """Oracle: the floor in the message is the minimum of `predict` over every spec of the space, enumerated."""
    import itertools

    from nas.search.loading import load_supernet
    from supernet.arch import SpecError

    net, _ = load_supernet(trained[0])
    table = LatencyTable.load(trained[1])
    best = float("inf")
    paths = [opts for opts, d in zip(net.stage_choices, net.space.depths) for _ in range(d)]
    widths = [list(range(w, 0, -16)) for w in net.space.widths]
    for combo in itertools.product(*paths):
        it = iter(combo)
        choices = tuple(tuple(next(it) for _ in range(d)) for d in net.space.depths)
        if all(c == "id" for c in combo):
            continue
        for ws in itertools.product(*widths):
            try:
                best = min(best, table.predict(net.spec_of(choices, ws)))
            except SpecError:  # MB3D not a suffix
                break
    with pytest.raises(UnreachableTarget, match=rf"reaches on this LUT: {best:.4g} ms"):
        slim(slim_cfg(trained, tmp_path / "o", [best * 0.98]))
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_lut_not_covering_the_space(trained, tmp_path):
    narrow = tmp_path / "narrow.csv"
    build_lut(
        compose("build_lut", [*SMALL_SPACE, *FAST, "space.widths=[16,16,32,16]", f"out={narrow}"], BuildLUTConfig)
    )
    with pytest.raises(LUTError, match="does not cover"):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"lut={narrow}"))
    other_size = tmp_path / "other.csv"
    build_lut(compose("build_lut", [*SMALL_SPACE, *FAST, "space.input_size=64", f"out={other_size}"], BuildLUTConfig))
    with pytest.raises(LUTError, match="measured at 64 px"):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"lut={other_size}"))


def test_bad_supernet_checkpoints(trained, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"supernet={tmp_path / 'missing.pt'}"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"supernet={bad}"))
    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["meta"]["space"]["widths"] = [32, 32, 32, 32]  # weights from another space than it declares
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="do not match its space"):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"supernet={other}"))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["meta"].pop("space"), "meta lacks 'space'"),
        (lambda c: c["meta"].pop("num_classes"), "meta lacks 'num_classes'"),
        (lambda c: c["meta"]["config"].pop("data"), "meta lacks 'config.data'"),
        (lambda c: c.pop("meta"), "meta lacks 'space'"),
        (lambda c: c["meta"]["space"].update(depthz=[1, 1, 1, 1]), "stored space is not a valid space"),
        (lambda c: c["meta"]["space"].update(depths=[1, 1]), "cannot be built"),
        (lambda c: c.pop("model"), "holds no 'model'"),
    ],
)
def test_supernet_checkpoint_faults_each_get_their_own_line(trained, tmp_path, mutate, match):
    ckpt = torch.load(trained[0], weights_only=True)
    mutate(ckpt)
    p = tmp_path / "sn.pt"
    torch.save(ckpt, p)
    with pytest.raises(CheckpointError, match=match):
        slim(slim_cfg(trained, tmp_path / "o", [1.0], f"supernet={p}"))
    if match.startswith("meta lacks"):  # through the CLI: one line, exit 2, no traceback
        r = subprocess.run(
            [sys.executable, "-m", "nas.slim", "--target-ms", "1.0", "--supernet", str(p), "--lut", str(trained[1])],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "meta lacks" in r.stderr


def test_overwrite_replaces_the_whole_set_of_targets(trained, tmp_path):
    start = trained[2]
    out = tmp_path / "o"
    slim(slim_cfg(trained, out, [round(start * 0.9, 4), round(start * 0.7, 4)]))
    slim(slim_cfg(trained, out, [round(start * 0.8, 4)], "overwrite=true"))
    assert sorted(p.name for p in out.glob("target_*ms")) == [f"target_{round(start * 0.8, 4):g}ms"]


def test_bn_batches_are_plain_images_from_a_seeded_generator(monkeypatch):
    """Oracle: with RandAugment on in the supernet's data config, the BN batches still equal the plain
    (un-augmented) images of the same indices, and two loads give identical tensors."""
    from nas.data import DataConfig, build_datasets
    from nas.search.evaluator import cached_batches

    data = DataConfig(name="digits", input_size=32, val_size=200, augment=True, auto_augment="rand-m9")
    torch.manual_seed(1)
    _, bn1 = cached_batches(data, val_images=50, bn_batches=2, batch_size=32, seed=3)
    torch.manual_seed(2)  # another global RNG state: nothing may depend on it
    _, bn2 = cached_batches(data, val_images=50, bn_batches=2, batch_size=32, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(bn1, bn2))
    plain = build_datasets(DataConfig(name="digits", input_size=32, val_size=200, augment=False)).train
    idx = torch.randperm(len(plain), generator=torch.Generator().manual_seed(3))[:64].tolist()
    assert torch.equal(torch.cat(bn1), torch.stack([plain[i][0] for i in idx]))


@pytest.mark.parametrize("targets", [[0.0], [-1.0], []])
def test_non_positive_or_missing_target(trained, tmp_path, targets):
    with pytest.raises(ConfigError):
        slim(slim_cfg(trained, tmp_path / "o", targets))


@pytest.mark.parametrize(
    "args, match",
    [
        (["--target-ms", "fast"], "invalid float value"),
        (["--target-ms", "-1"], "targets must be positive"),
        (["--target-ms", "1.0", "val_imagez=3"], "val_imagez"),
    ],
)
def test_cli_bad_input_is_one_line(trained, args, match):
    r = subprocess.run(
        [sys.executable, "-m", "nas.slim", *args, "--supernet", str(trained[0]), "--lut", str(trained[1])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and match in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1


# ------------------------------------------------------------------------------------------------- --verify
def _traj(latencies):
    from nas.search.state import Step

    states = [SlimState(((f"{k}",),), (16,)) for k in range(len(latencies))]  # distinct placeholder states
    return [Step(k, "a", "", ms, 0.9, 0.0, s, k) for k, (ms, s) in enumerate(zip(latencies, states))]


def test_verify_passes_over_states_that_measure_above_the_target():
    from nas.search.verify import verified_step

    traj = _traj([2.0, 1.5, 1.0, 0.95, 0.8])
    true_ms = {s.state: s.latency_ms * 1.06 for s in traj}  # the mocked measurement runs 6% over prediction
    calls = []

    def measure(states):
        calls.append(list(states))
        return [true_ms[s] for s in states]

    cache = {}
    v = verified_step(traj, 1.0, measure, extend=lambda t: pytest.fail("no extension needed"), measured=cache, batch=4)
    # step 2 (1.0 predicted) measures 1.06 and step 3 (0.95) 1.007: both passed over; step 4 (0.8 -> 0.848) kept
    assert v.step.step == 4 and v.measured_ms == pytest.approx(0.848) and [k for k, _ in v.skipped] == [2, 3]
    # one interleaved group of 4: the 3 candidates, padded with the state just before them
    assert len(calls) == 1 and calls[0] == [traj[k].state for k in (1, 2, 3, 4)]
    v2 = verified_step(traj, 1.6, measure, extend=None, measured=cache, batch=4)  # reuses the measurements
    assert v2.step.step == 1 and v2.skipped == () and len(calls) == 1
    # measured at or below the target from the start: the predicted state is kept
    ok = verified_step(_traj([2.0, 1.0]), 1.0, lambda s: [0.99] * len(s), extend=lambda t: None, measured={})
    assert ok.step.step == 1 and ok.skipped == ()


def test_verify_slims_further_when_the_trajectory_runs_out():
    from nas.search.state import Step
    from nas.search.verify import verified_step

    traj = _traj([2.0, 1.0])

    def extend(t):
        new = Step(len(t), "more", "", t[-1].latency_ms * 0.8, 0.9, 0.0, SlimState(((f"x{len(t)}",),), (16,)), 0)
        t.append(new)
        return new

    v = verified_step(
        traj, 1.0, lambda states: [1.1 * 0.8 ** (int(s.choices[0][0].strip("x")) - 1) for s in states], extend, {}
    )
    assert v.step.step == 2 and v.measured_ms <= 1.0 and len(traj) == 3  # slimmed exactly one step further
    with pytest.raises(UnreachableTarget, match="no state of the slimming trajectory"):
        verified_step(_traj([2.0, 1.0]), 1.0, lambda s: [1.5] * len(s), extend=lambda t: None, measured={})


def test_slim_verify_end_to_end_with_a_mocked_slow_measurement(trained, tmp_path, monkeypatch, caplog):
    """nas.slim --verify where every network measures 12% above its prediction: each emitted arch records a
    measured latency at or below its target, and says which states were passed over."""
    import nas.search.verify as verify_mod

    table = LatencyTable.load(trained[1])
    monkeypatch.setattr(
        verify_mod,
        "measure_networks",
        lambda specs, backend, cfg, batch, seed: [{"ms": table.predict(s) * 1.12} for s in specs],
    )
    start = trained[2]
    targets = [round(start * 0.8, 4), round(start * 0.6, 4)]
    with caplog.at_level(logging.INFO):
        out = slim(slim_cfg(trained, tmp_path / "v", targets, "verify=true"))
    for t in targets:
        meta = yaml.safe_load((out / f"target_{t:g}ms" / "arch.yaml").read_text())["meta"]
        assert meta["measured_ms"] <= t and meta["measured_ms"] == pytest.approx(meta["predicted_ms"] * 1.12, rel=1e-4)
        assert meta["predicted_ms"] <= t / 1.12 + 1e-9
    assert "passed over" in caplog.text and "emitting step" in caplog.text


def test_verify_where_the_backend_cannot_run_is_one_line(trained, caplog):
    from nas.search.verify import verify_backend

    table = LatencyTable.load(trained[1])
    table.meta["backend"] = "coreml"
    if sys.platform == "darwin":
        pytest.skip("coreml runs on macOS")
    with caplog.at_level(logging.WARNING):
        assert verify_backend(table) is None
    lines = [r.getMessage() for r in caplog.records if "--verify" in r.getMessage()]
    assert len(lines) == 1 and "macOS" in lines[0] and "predicted" in lines[0]
    table.meta["backend"], table.meta["device"] = "torch", "Apple M2"
    with caplog.at_level(logging.WARNING):
        assert verify_backend(table) is None
    assert "Apple M2" in caplog.records[-1].getMessage()
