"""Helpers of the benchmark scripts whose mistakes would silently change a reported figure."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.config import compose, to_yaml
from nas.train import TrainModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import search_quality  # noqa: E402


def test_kendall_tau_matches_scipys_tau_b_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, 15).astype(float)  # few distinct values: many ties in both
        y = x + rng.integers(-2, 3, 15)
        assert search_quality.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_a_kept_run_is_reused_only_with_the_same_recipe(tmp_path):
    over = ["arch=l1", "data=digits", *search_quality.BUDGET]
    cfg = compose("train", over, TrainModelConfig)
    stored = tmp_path / "config.yaml"
    assert not search_quality.same_recipe(stored, cfg)  # no run there
    stored.write_text(to_yaml(cfg))
    assert search_quality.same_recipe(stored, cfg)
    longer = compose("train", [*over, "train.epochs=3"], TrainModelConfig)
    other_data = compose("train", [*over, "data.train_limit=20000"], TrainModelConfig)
    assert not search_quality.same_recipe(stored, longer)
    assert not search_quality.same_recipe(stored, other_data)


@pytest.mark.slow
def test_the_prepared_gpu_script_runs_every_step_at_cpu_scale(tmp_path):
    """benchmarks/l7_gpu.py --small: the same six steps as on a GPU, each with its wall time; the winner's export
    matches torch. (On a GPU the script is run by hand: a GPU is lent only sometimes.)"""
    import l7_gpu

    rows = l7_gpu.main(["--small", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "l7_gpu.txt")])
    assert [r["step"] for r in rows] == ["data", "train_supernet", "build_lut", "slim", "train", "export"]
    assert all(r["wall_s"] >= 0 for r in rows) and "per evaluation on cpu" in rows[3]["note"]
    diff = float(rows[5]["note"].split("torch ")[1])
    assert diff < 1e-4
    text = (tmp_path / "l7_gpu.txt").read_text()
    assert "space tiny, 64 px, device cpu" in text and len(text.splitlines()) == 7


@pytest.mark.slow
def test_peers_compares_searched_and_zoo_models_at_equal_measured_latency(trained, tmp_path):
    """benchmarks/peers.py --quick on the test supernet and its torch LUT: every model timed, ours found at each
    target, a zoo model's learning rate chosen on held-out images, and each target's best-at-or-under pairing
    checked against the CSV by hand."""
    import peers

    sn, lut, _ = trained
    prefix = tmp_path / "peers"
    df = peers.main(
        ["--quick", "--supernet", str(sn), "--lut", f"torch={lut}", "--runtimes", "torch", "--work",
         str(tmp_path / "work"), "--out", str(prefix), "--zoo", "lcnet_050", "mobilenetv3_small_050", "--near", "1e3",
         "--jobs", "2", "--long-epochs", "2"]
    )  # fmt: skip
    assert set(df["family"]) == {"ours", "LCNet", "MobileNetV3"} and (df["torch_ms"] > 0).all()
    assert {"same", "best of sweep"} == set(df.loc[df["family"] != "ours", "recipe"]) == set(df["recipe"])
    ours = df[df["family"] == "ours"]
    for _, runs in ours.groupby("model"):  # ours: x1 at every seed, and the sweep's choice at every seed
        assert sorted(runs["recipe"]) == ["best of sweep", "same"] and (tmp_path / "work" / "ours_lr0.5").is_dir()
    for name in ("lcnet_050", "mobilenetv3_small_050"):  # best of sweep = the best held-out top-1, not test
        runs = tmp_path / "work" / "zoo" / name
        val = {
            float(d.name[2:]): json.loads((d / "seed0" / "metrics.json").read_text())["val_top1"]
            for d in runs.iterdir()
        }
        chosen = df[(df["model"] == name) & (df["recipe"] == "best of sweep")]["lr_factor"].iloc[0]
        assert chosen == max(val, key=val.get)
        # the sweep is x0.5 and x1, doubled (at most twice) while its largest rate is the best
        assert {0.5, 1.0} <= set(val) <= {0.5, 1.0, 2.0, 4.0}
        assert (2.0 in val) == (val[1.0] > val[0.5]) and (4.0 in val) == (2.0 in val and val[2.0] > val[1.0])
    text = (prefix.with_suffix(".txt")).read_text()
    chosen = df[df["recipe"] == "best of sweep"]  # every model's figure: its best of sweep (ours are swept too)
    best = chosen.groupby("model").agg(acc=("test_top1", "mean"), ms=("torch_ms", "first"), fam=("family", "first"))
    text, longer = text.split("longer recipe (2 epochs")
    for line in [x for x in text.splitlines() if x.strip().startswith("L=")]:
        t = float(line.split("L=")[1].split(" ms")[0])
        under = best[best["ms"] <= t]
        zoo = under[under["fam"] != "ours"]
        assert ("zoo none at or under L" in line) == zoo.empty
        if not zoo.empty:
            assert f"zoo {zoo['acc'].idxmax()} " in line
    # the longer recipe retrains a pair at the largest and at the smallest comparison latency exactly where both
    # sides have a model at or under it (which depends on this CPU's timings, so each line is checked by hand)
    at = [x for x in longer.splitlines() if x.strip().startswith("L=")]
    assert 1 <= len(at) <= 2
    for line in at:
        under = best[best["ms"] <= float(line.split("L=")[1].split(" ms")[0])]
        mine = under[(under["fam"] == "ours") & under.index.str.endswith("(torch LUT)")]
        assert ("lead" in line) == (not mine.empty and not under[under["fam"] != "ours"].empty)
    pair = [x for x in at if "lead" in x]
    assert (
        len(pair) >= 1
        and (tmp_path / "work" / "long" / "zoo").is_dir()
        and any((tmp_path / "work" / "long").glob("ours*"))
    )
    assert prefix.with_suffix(".png").stat().st_size > 1000


def test_peers_rejects_a_malformed_lut_or_an_unknown_skipped_model(capsys):
    """One argparse line and exit status 2, before anything is timed or trained."""
    import peers

    for argv, said in ((["--lut", "lut.csv"], "RUNTIME=PATH"), (["--skip-train", "nope"], "not in --zoo")):
        with pytest.raises(SystemExit) as exit_:
            peers.parse_args(argv)
        assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("jobs", [1, 2])
def test_peers_chooses_each_rate_by_held_out_top1_and_extends_only_at_the_edge(jobs):
    """A made-up held-out top-1 per (model, rate), so the chosen rates are known by hand: 'peak4' is best at the
    sweep's edge (x4), so x8 is tried and loses; 'climbs' keeps climbing and stops at the cap (x1, x2, x4 and two
    doublings: x16); 'inside' peaks at x2 and is not extended. Every seed is then submitted at the chosen rate."""
    import argparse
    from concurrent.futures import ThreadPoolExecutor

    import peers

    val = {"peak4": {1: 0.5, 2: 0.6, 4: 0.7, 8: 0.65}, "climbs": {f: f / 100 for f in (1, 2, 4, 8, 16, 32)}}
    val["inside"] = {1: 0.5, 2: 0.8, 4: 0.7}
    a = argparse.Namespace(seeds=[0, 1, 2], lr_factors=[1.0, 2.0, 4.0], lr_extend=2)
    asked: list[tuple[str, int, float]] = []
    ex = ThreadPoolExecutor(jobs) if jobs > 1 else peers._Serial()

    def submit(name, seed, factor):
        asked.append((name, seed, factor))
        return ex.submit(lambda: {"val_top1": val[name][int(factor)]})

    best = peers.choose_rates(a, list(val), submit)
    assert best == {"peak4": 4.0, "climbs": 16.0, "inside": 2.0}
    tried = {n: sorted({f for m, s, f in asked if m == n and s == 0}) for n in val}  # the real submit dedups
    assert tried == {"peak4": [1, 2, 4, 8], "climbs": [1, 2, 4, 8, 16], "inside": [1, 2, 4]}
    assert all((n, s, best[n]) in asked for n in val for s in (1, 2))


def test_peers_best_at_or_under_a_latency_counts_ours_from_this_runtimes_lut_unless_asked():
    """Hand-made per-model rows on torch: at L = 2.0 ms ours found on the torch LUT is too slow (2.5 ms), so only
    the model found on the onnxruntime LUT (1.2 ms) is ours' best with any_lut; the zoo's best is the more accurate
    of the two under L, not the faster."""
    import pandas as pd
    import peers

    m = pd.DataFrame(
        [
            ("ours 0.2 ms (onnxruntime LUT)", "ours", 1.2, 0.84),
            ("ours 2.0 ms (torch LUT)", "ours", 2.5, 0.85),
            ("lcnet_050", "LCNet", 1.9, 0.77),
            ("mobilenetv3_small_050", "MobileNetV3", 1.95, 0.82),
            ("mobilenetv3_small_100", "MobileNetV3", 2.2, 0.90),
        ],
        columns=["model", "family", "ms", "mean"],
    )
    mine, theirs = peers.best_at(m, "torch", 2.0)
    assert mine is None and theirs["model"] == "mobilenetv3_small_050"
    mine, _ = peers.best_at(m, "torch", 2.0, any_lut=True)
    assert mine["model"] == "ours 0.2 ms (onnxruntime LUT)"
    mine, theirs = peers.best_at(m, "torch", 3.0)
    assert mine["model"] == "ours 2.0 ms (torch LUT)" and theirs["model"] == "mobilenetv3_small_100"


def test_space_probe_widens_every_stage_by_the_step_and_refuses_an_empty_work_folder(tmp_path, capsys):
    """x1.5 of widths 32/64/96/128 is 48/96/144/192 by hand; depths, block kinds and the stem are kept, and the
    widened spec builds and runs. A --work without found architectures, or a missing --peers-csv, is one argparse
    line and exit 2."""
    import space_probe
    import torch

    from supernet.arch import ArchSpec, StageSpec
    from supernet.model import build_model

    spec = ArchSpec(
        stages=(StageSpec(32), StageSpec(64, ("4d",)), StageSpec(96, ("3d", "3d")), StageSpec(128, ("4d", "3d"))),
        input_size=64,
        num_classes=10,
        stem_width=16,
    )
    wide = space_probe.widened(spec, 1.5)
    assert [s.width for s in wide.stages] == [48, 96, 144, 192] and wide.stem_width == 16
    assert [s.blocks for s in wide.stages] == [s.blocks for s in spec.stages]
    assert build_model(wide).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    for extra, said in (([], "no found architectures"), (["--peers-csv", str(tmp_path / "no.csv")], "no such file")):
        with pytest.raises(SystemExit) as exit_:
            space_probe.parse_args(["--work", str(tmp_path), "--out", str(tmp_path / "p"), *extra])
        assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_main_job_runs_in_abba_order_and_reports_ratios_of_mean_wall_times(tmp_path):
    """The order alternates per seed; the report's ratios are of the means over seeds, worked out by hand here:
    totals 1000 and 800 s against 600 and 520 s are 900 against 560 s, 0.62x; per seed 0.60x and 0.65x."""
    import main_job
    import pandas as pd

    assert main_job.abba(["a", "b"], [0, 1, 2]) == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    rows = []
    for variant, seed, sn, total, top1 in (
        ("old", 0, 600, 1000, 0.90),
        ("new", 0, 300, 600, 0.91),
        ("new", 1, 260, 520, 0.89),
        ("old", 1, 500, 800, 0.89),
    ):
        steps = {"train_supernet_s": sn, "build_lut_s": 100, "slim_s": 100, "train_s": total - sn - 201, "export_s": 1}
        rows.append({"variant": variant, "seed": seed, **steps, "total_s": total, "test_top1": top1})
        rows[-1].update(precision="fp32", arch="x")
    text = main_job.report(pd.DataFrame(rows), "old", "title")
    line = text.splitlines()[-1]
    assert line.startswith("new / old, means over seeds: main job 0.62x (560 s against 900 s; per seed 0.60x, 0.65x)")
    assert "train_supernet 0.51x" in line and "build_lut 1.00x" in line  # 280 / 550
    assert line.endswith("test top-1 90.00 against 89.50% (+0.50)")
    with pytest.raises(SystemExit, match="missing: fp32-nchw-s0, defaults-s0"):
        main_job.main(["--report", "--work", str(tmp_path), "--seeds", "0"])
    with pytest.raises(SystemExit, match="missing: issue-23-s0, defaults-s0, defaults-s1, issue-23-s1"):
        main_job.main(["--report", "--work", str(tmp_path), "--seeds", "0", "1", "--variants", "issue-23", "defaults"])
    assert main_job.VARIANTS["issue-23"] == ["supernet.hard=false", "train.amp=off", "train.channels_last=false"]


def test_host_noise_figures_by_hand():
    """Four groups; the sentinel's fastest reading is 1.0 and each other network's too. Groups 2 and 3 ran slow
    (sentinel 2.0, the others 1.8 and 1.6: both > 10%), group 4's sentinel 1.05 is within the gate while its others
    ran 1.3x: the gate re-measures 2 of 4 groups, all truly slow (precision 100%), and misses 1 of the 2 it passed.
    The longest slow period is 2 groups, at 0.5 s per group 1.0 s. The gate's rule, the 4 readings noted as one
    chunk: their median 1.525 + 10% = 1.68 (too few readings for a Tukey fence) sends back the same 2 groups; the
    first rule's fastest reading 1.0 + 10% sends them back too."""
    import host_noise

    def group(t, sentinel, others):
        return {"t": t, "ms": {"sentinel": sentinel, **{f"net{k}": v for k, v in enumerate(others)}}}

    run = {"backend": "x", "threads": 2, "cpu": "cpu", "seconds": 2.0}
    run["groups"] = [
        group(0.5, 1.0, [1.0, 2.0, 3.0]),
        group(1.0, 2.0, [1.8, 3.6, 5.4]),
        group(1.5, 2.0, [1.6, 3.2, 4.8]),
        group(2.0, 1.05, [1.3, 2.6, 3.9]),
    ]
    f = host_noise.analyse(run)
    assert f["gated"] == 0.5 and f["precision"] == 1.0 and f["missed"] == 0.5
    assert (f["longest_groups"], f["longest_s"], f["group_s"]) == (2, 1.0, 0.5)
    assert f["sentinel_max"] == 2.0 and f["others_max"] == pytest.approx(1.8) and f["others_p50"] == pytest.approx(1.45)
    assert (f["rule"], f["rule_precision"], f["rule_missed"], f["first_rule"]) == (0.5, 1.0, 0.5, 0.5)
    assert "2 consecutive gated groups (1.0 s)" in host_noise.report(run)
    now, before = host_noise.gate_rules([1.0, 1.3, 1.0, 1.12] * 4, [float(t) for t in range(16)], per_chunk=16)
    # q1 1.0, median 1.06, q3 1.165 (by hand, numpy's linear percentiles): fence 1.165 + 1.5 * 0.165 = 1.41 passes all
    # 16; the fastest reading 1.0 + 10% sends back the 8 readings 1.3 and 1.12
    assert not now.any() and before.sum() == 8


def test_gate_cost_ratios_by_hand():
    """Two rounds: 120 s with the gate against 100 s without (1.2), then 90 s against 100 s (0.9): median 1.05, range
    0.90-1.20; the first round's gate measured 12 of 48 passes again (25%)."""
    import gate_cost

    rows = [
        {"round": 1, "gate": False, "seconds": 100.0, "gate_remeasured": 0, "gate_passes": 0, "gate_still_slow": 0},
        {"round": 1, "gate": True, "seconds": 120.0, "gate_remeasured": 12, "gate_passes": 48, "gate_still_slow": 1},
        {"round": 2, "gate": True, "seconds": 90.0, "gate_remeasured": 0, "gate_passes": 48, "gate_still_slow": 0},
        {"round": 2, "gate": False, "seconds": 100.0, "gate_remeasured": 0, "gate_passes": 0, "gate_still_slow": 0},
    ]
    lines = gate_cost.summarize(rows)
    assert "ratio 1.20; the gate measured 12 of 48 group passes again (25%), 1 stayed slow" in lines[0]
    assert "ratio 0.90" in lines[1] and lines[-1].startswith("gate on / off: median 1.05, range 0.90-1.20 over 2")


def test_gate_line_reads_the_gates_own_summary():
    """lut_repeatability.GateLine parses the line the build logs (Gate.describe) back into the gate's own counts."""
    import logging

    from lut_repeatability import GateLine

    from latency_lut.bundle_measure import Gate

    gate = Gate({"gate_pct": 10})
    gate.passes, gate.slow, gate.remeasured, gate.still_slow = 144, 13, 6, 1
    with GateLine() as line:
        logging.getLogger("latency_lut.build").info(gate.describe())
    assert line.counts() == {"gate_slow": 13, "gate_remeasured": 6, "gate_passes": 144, "gate_still_slow": 1}


def test_cross_read_gives_each_kept_table_the_figures_its_own_validation_recorded():
    """Run 6's kept tables, each read again on its own validation (nothing timed), against the figures the sweep
    recorded when it validated them; and each is read on the other build's validation too."""
    import cross_read
    import pandas as pd

    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    df = cross_read.cross(results / "lut_configs_run6_xeon_tables")
    recorded = pd.read_csv(results / "lut_configs_run6_xeon.csv")
    recorded["table"] = [f"{c.replace(':', '-')}-{b - 1}" for c, b in zip(recorded["config"], recorded["build"])]
    own = df[df["own"]].merge(recorded, on="table", suffixes=("", "_recorded"))
    assert len(own) == 12  # every build of run 6
    assert np.allclose(own["within10_now"], own["within10_now_recorded"])
    assert np.allclose(own["spearman_now"], own["spearman_now_recorded"], atol=1e-3)
    assert len(df) == 24 and (~df["own"]).sum() == 12


def test_width_cost_reads_back_the_states_nas_slim_writes(tmp_path):
    """width_cost.py re-scores the states of a trajectory.csv: what it parses is what `trajectory_frame` wrote."""
    import width_cost

    from nas.search.report import trajectory_frame
    from nas.search.state import SlimState, Step

    states = [
        SlimState((("4d", "4d"), ("4d",), ("4d", "3d"), ("3d",)), (32, 64, 96, 128)),
        SlimState((("id", "4d"), ("id",), ("4d", "id"), ("3d",)), (16, 64, 80, 128)),
    ]
    steps = [
        Step(k, "start" if k == 0 else "drop_path", "", 1.0 - k / 10, 0.5, 0.9, 0.0, s, k) for k, s in enumerate(states)
    ]
    path = tmp_path / "trajectory.csv"
    trajectory_frame(steps).to_csv(path, index=False)
    assert width_cost.trajectory_states(path) == [(0, states[0]), (1, states[1])]


def test_reference_choice_picks_the_references_nearest_the_windows_median_by_hand():
    import reference_choice

    refs = [("a", 0.7), ("b", 0.8), ("c", 1.5), ("d", 2.6), ("e", 2.7)]
    pick = lambda pred, n: [name for name, _ in reference_choice.nearest_references(refs, pred, n)]  # noqa: E731
    assert pick([2.4, 2.5, 3.0], 2) == ["d", "e"]  # median 2.5: 0.1 and 0.2 away
    assert pick([1.4], 2) == ["b", "c"]  # 0.1 and 0.6 away, kept in the references' order
    assert pick([0.1, 5.0], 9) == ["a", "b", "c", "d", "e"]  # more than there are: all of them


def test_share_noise_sigma_and_chance_above_by_hand():
    import share_noise
    from scipy.stats import norm

    # pairs differing by +-0.02 in log: SD 0.02 (ddof 1: 0.0231), MAD 0.02; one reading's noise is that over sqrt(2)
    s = share_noise.sigmas(np.array([0.02, -0.02, 0.02, -0.02]))
    assert s["sd"] == pytest.approx(np.std([0.02, -0.02, 0.02, -0.02], ddof=1) / np.sqrt(2))
    assert s["mad"] == pytest.approx(1.4826 * 0.02 / np.sqrt(2))
    assert share_noise.p_above(1.0, 0.02) == pytest.approx(0.5)  # at the target: above half the time
    z = -np.log(0.97) / 0.02  # 97% of the target, 2% noise: 1.52 sigma below it
    assert share_noise.p_above(0.97, 0.02) == pytest.approx(1 - norm.cdf(z))


def test_share_noise_refuses_a_missing_or_foreign_csv_in_one_line(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "share_noise.py"
    foreign = tmp_path / "other.csv"
    foreign.write_text("target_ms,run\n1.0,plain\n")
    broken = tmp_path / "broken.csv"
    broken.write_text('a,b\n"x\n')
    for bad, says in (
        (tmp_path / "none.csv", "no such file"),
        (foreign, "not a verify_targets.py CSV"),
        (broken, "not a readable CSV"),
    ):
        r = subprocess.run(
            [sys.executable, str(script), str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True
        )
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr
    assert not (tmp_path / "o.txt").exists()  # nothing written


def test_rank_repeatability_recovers_a_tables_fidelity_to_a_truth_it_never_sees():
    """Three noisy readings of known true latencies: triple collocation's estimate of the first reading's Spearman
    with the truth matches that Spearman, computed from the truth (which the estimator is not given), though the
    reading correlates less with either noisy measurement; and likewise the second reading's ceiling."""
    import rank_repeatability
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    truth = rng.lognormal(0.0, 0.4, 4000)
    table = truth * rng.lognormal(0.0, 0.02, truth.size)  # a good table
    validation = truth * rng.lognormal(0.0, 0.06, truth.size)  # noisier measurements
    alone = truth * rng.lognormal(0.0, 0.05, truth.size)
    r = rank_repeatability.triad(table, validation, alone)
    assert r["fidelity"] == pytest.approx(spearmanr(table, truth)[0], abs=0.003)
    assert r["ceiling"] == pytest.approx(spearmanr(validation, truth)[0], abs=0.003)
    assert r["pa"] < spearmanr(table, truth)[0] - 0.01  # what the goal reads is lower than the table's own fidelity


def test_rank_repeatability_refuses_a_foreign_csv_in_one_line(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "rank_repeatability.py"
    foreign = tmp_path / "other.csv"
    foreign.write_text("config,build\ntorch:1:64:1,1\n")
    for bad, says in ((tmp_path / "none.csv", "no such file"), (foreign, "not a lut_repeatability.py networks CSV")):
        r = subprocess.run(
            [sys.executable, str(script), str(bad), "--out", str(tmp_path / "o")], capture_output=True, text=True
        )
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and says in r.stderr
    assert not (tmp_path / "o.txt").exists()
