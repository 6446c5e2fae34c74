"""`python -m nas.slim --target-ms 1.6`: slim a trained supernet to latency targets and emit EfficientViT configs.

    python -m nas.slim --target-ms 1.0                        # the newest supernet.pt and lut.csv under runs/
    python -m nas.slim --target-ms 0.6 0.8 1.0 --supernet runs/supernet/X/supernet.pt --lut luts/tiny.csv --out D
    python -m nas.slim --target-ms 1.0 val_images=1000 bn_batches=2 mb3d_action=mb4d   # hydra overrides
    python -m nas.slim --target-ms 1.0 0.8 --verify           # measure what is emitted; keep the target measured
    python -m nas.slim --target-ms 1.0 method=paper           # the paper's rule (Section 4.2, defects fixed)

One slimming trajectory serves every target: each target's config is the first state at or below it, then (with
`method=default`) refilled with the latency left under the target (nas/search/slimmer.py explains both rule
sets). Latency comes from the LUT's (calibrated) prediction, quality from the supernet restricted to each
candidate (its weights physically sliced, BN statistics re-estimated on training batches): its cross-entropy on
the held-out validation split, with top-1 reported beside it.

`--verify` measures each emitted architecture (the whole fused network, in interleaved rounds) on the LUT's
backend and settings, when that backend runs on this machine. A state that measures above its target is passed
over for the next trajectory state that measures at or below it (slimming further if the trajectory ends), and
the output says so; `arch.yaml` records `measured_ms` beside `predicted_ms`. Where the backend cannot run here
(CoreML on Linux, a LUT from another device), it says so in one line and emits the predicted state. There, measure
on the device instead (nas/search/remote.py):

    python -m nas.slim --target-ms 1.0 0.8 --lut luts/pi.csv bundle=verify-pi     # candidates -> bundle
    (on the device: cd verify-pi && python measure.py; copy timings.csv back)
    python -m nas.slim --target-ms 1.0 0.8 --lut luts/pi.csv from_timings=verify-pi

Outputs (written to a staging folder and moved into --out only when complete):
    target_<T>ms/arch.yaml, target_<T>ms/weights.pt, trajectory.csv, pareto.png, config.yaml
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from latency_lut.bundle import SUFFIX
from latency_lut.measure import MeasureConfig
from latency_lut.table import LatencyTable
from nas.config import ConfigError, OneLineParser, compose, setup_logging, to_yaml
from nas.errors import run_cli
from nas.search.bounds import min_latency
from nas.search.evaluator import SubnetEvaluator, cached_batches
from nas.search.latency import StateLatency
from nas.search.loading import check_lut_covers, load_supernet, supernet_data_config
from nas.search.remote import remote_verify
from nas.search.report import emitted_meta, publish, summary_table, target_dirname, trajectory_frame, write_target
from nas.search.slimmer import METHODS, Slimmer
from nas.search.state import SlimState, Step, UnreachableTarget, first_at_or_below
from nas.search.verify import Verified, verify_backend, verify_targets
from supernet.errors import UserError
from supernet.files import atomic_write_text
from supernet.supernet import SuperNet

log = logging.getLogger(__name__)


@dataclass
class SlimConfig:
    target_ms: list[float] = field(default_factory=list)  # one or more latency targets (ms, LUT-predicted)
    supernet: str | None = None  # supernet.pt; default: the newest runs/**/supernet.pt
    lut: str | None = None  # LUT CSV; default: the newest runs/**/lut.csv
    out: str | None = None  # output folder; default runs/slim/<timestamp>
    val_images: int = 2000  # held-out validation images scoring each action (from the supernet's val split)
    bn_batches: int = 4  # training batches that re-estimate BN statistics before every evaluation
    batch_size: int = 250
    width_step: int = 16
    mb3d_action: str = "identity"  # what "remove the first MB3D" does: identity (drop it) or mb4d (replace it)
    method: str = "default"  # default | paper: the rule set (nas.search.slimmer.METHODS)
    threads: int = 2
    seed: int = 0
    overwrite: bool = False  # allow writing into an --out that already holds slimming results
    verify: bool = False  # measure each emitted architecture; emit the next state measuring <= target if it is over
    bundle: str | None = None  # remote verify: write each target's candidate states into a device bundle (DIR)
    from_timings: str | None = None  # remote verify: that bundle, timed on the device; emit what measured <= target
    # as nas.build_lut times its calibration networks (the same statistic, so the calibration carries over)
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # --verify


# ------------------------------------------------------------------------------------------------ inputs
def newest(pattern: str, root: Path = Path("runs")) -> list[Path]:
    return sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


def pick_inputs(cfg: SlimConfig) -> tuple[Path, Path]:
    """The supernet and LUT paths, defaulting to the newest run outputs (and saying which were picked)."""
    if cfg.supernet:
        sn = Path(cfg.supernet)
        sn = sn / "supernet.pt" if sn.is_dir() else sn
    else:
        found = newest("**/supernet.pt")
        if not found:
            raise UserError(
                "no supernet given and none found under runs/; run python -m nas.train_supernet "
                "first or pass --supernet PATH"
            )
        sn = found[0]
        log.info("using the newest supernet: %s", sn)
    if cfg.lut:
        return sn, Path(cfg.lut)
    found = newest("**/lut.csv")
    if not found:
        raise UserError("no LUT given and none found under runs/; run python -m nas.build_lut first or pass --lut")
    log.info("using the newest LUT: %s", found[0])
    return sn, found[0]


def validate_targets(targets: list[float]) -> list[float]:
    if not targets:
        raise ConfigError("give at least one latency target: --target-ms 1.6")
    for t in targets:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"target {t!r} ms: targets must be positive numbers")
    return sorted(set(float(t) for t in targets), reverse=True)


def check_config(cfg: SlimConfig) -> list[float]:
    """The targets, largest first; a config the search cannot run is refused before anything loads."""
    if cfg.mb3d_action not in ("identity", "mb4d"):
        raise ConfigError(f"mb3d_action={cfg.mb3d_action!r}; choose identity or mb4d")
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r}; choose one of {', '.join(METHODS)}")
    if sum([bool(cfg.verify), bool(cfg.bundle), bool(cfg.from_timings)]) > 1:
        raise ConfigError(
            "choose one of --verify (measure here), bundle=DIR and from_timings=DIR (measure on a device)"
        )
    return validate_targets(list(cfg.target_ms))


def check_reachable(net: SuperNet, table: LatencyTable, targets: list[float], step: int) -> None:
    floor, floor_spec = min_latency(net, table, step)
    if min(targets) < floor:
        raise UnreachableTarget(
            f"target {min(targets):g} ms is below the smallest latency this space reaches on "
            f"this LUT: {floor:.4g} ms (one block, narrowest widths: depths {floor_spec.depths})"
        )


def output_dir(cfg: SlimConfig) -> Path:
    out = Path(cfg.out) if cfg.out else Path("runs/slim") / time.strftime("%Y%m%d-%H%M%S")
    if (out / "trajectory.csv").exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds slimming results; pass another --out or overwrite=true")
    return out


# ---------------------------------------------------------------------------------------------- search
def progress_reporter(bar: tqdm):
    def on_step(s: Step) -> None:
        bar.update(1)
        bar.set_postfix(ms=f"{s.latency_ms:.3f}", loss=f"{s.val_loss:.4f}", evals=s.evaluations)
        log.info(
            "step %2d %-12s %-18s -> %.4f ms  val_loss %.4f  val_acc %.4f  score %.3g /ms",
            s.step,
            s.action,
            s.where,
            s.latency_ms,
            s.val_loss,
            s.val_acc,
            s.score,
        )

    return on_step


def search(
    cfg: SlimConfig, targets: list[float], net: SuperNet, table: LatencyTable, evaluator: SubnetEvaluator
) -> tuple[list[Step], dict[float, list[Step]], dict[float, Verified], Slimmer]:
    """One slimming trajectory down to the smallest target; per target, the refill steps after its first state
    at or below it; with `verify`, each target's measured state."""

    latency = StateLatency(net, table)
    path_scores, stage_scores = net.importance()
    mb3d_to = "id" if cfg.mb3d_action == "identity" else "4d"
    with tqdm(desc=f"slimming ({cfg.method})", unit="step", dynamic_ncols=True) as bar:
        slimmer = Slimmer(
            latency,
            evaluator,
            path_scores,
            stage_scores,
            METHODS[cfg.method],
            latency.saving_se,
            cfg.width_step,
            mb3d_to,
            progress_reporter(bar),
        )
        start = SlimState(net.derive(include_identity=False), tuple(net.space.widths))
        traj = slimmer.run(start, targets)
        refills = {t: slimmer.refill(first_at_or_below(traj, t), t, start) for t in targets}
        backend = verify_backend(table) if cfg.verify else None
        verified = {}
        if cfg.bundle or cfg.from_timings:
            verified = remote_verify(
                cfg.bundle, cfg.from_timings, table, net, traj, refills, cfg.measure, slimmer.extend
            )
        elif backend is not None:
            batch = int(table.meta["batch"])
            firsts = {t: r[-1] for t, r in refills.items() if r}
            verified = verify_targets(traj, targets, slimmer, net, table, backend, cfg.measure, batch, cfg.seed, firsts)
    return traj, refills, verified, slimmer


def write_outputs(
    cfg: SlimConfig,
    out: Path,
    targets: list[float],
    traj: list[Step],
    refills: dict[float, list[Step]],
    verified: dict[float, Verified],
    ctx: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every target's arch.yaml and weights.pt, the trajectory, config and Pareto plot, written to a staging
    folder and published into `out` as a set. `ctx` holds the supernet, its path, the LUT and the evaluator."""
    from nas.plots import plot_pareto

    net, table, evaluator = ctx["net"], ctx["table"], ctx["evaluator"]
    out.parent.mkdir(parents=True, exist_ok=True)  # staging must sit on the same filesystem for os.replace
    staging = Path(tempfile.mkdtemp(prefix=".slim-staging-", dir=out.parent))
    rows = []
    try:
        for t in targets:
            if t in verified:
                step, measured = verified[t].step, verified[t].measured_ms
            else:
                step, measured = (refills[t] or [first_at_or_below(traj, t)])[-1], None
            done = refills[t]
            base = verified[t].origin if t in verified and verified[t].origin is not None else step
            moves = [f"{x.action} {x.where}" for x in done[: done.index(base) + 1]] if base in done else []
            if t in verified:  # refill moves made under the measured latency, after the verified state
                moves += [f"{x.action} {x.where} (measured)" for x in verified[t].refilled]
            if step.step == 0:
                log.info(
                    "target %g ms is at or above the starting latency %.4g ms: emitting the unslimmed architecture",
                    t,
                    traj[0].latency_ms,
                )
            spec = net.spec_of(step.state.choices, step.state.widths)
            meta = emitted_meta(step, spec, t, table, ctx["sn_path"], measured)
            meta.update(method=cfg.method, refill=moves)
            write_target(staging / target_dirname(t), step, spec, evaluator.model(step.state), meta)
            rows.append(
                {
                    "target": t,
                    "predicted": step.latency_ms,
                    "measured": measured,
                    "loss": step.val_loss,
                    "acc": step.val_acc,
                    "step": step.step,
                    "arch": step.state.describe(),
                }
            )
        frame = trajectory_frame(traj)
        atomic_write_text(staging / "trajectory.csv", frame.to_csv(index=False))
        atomic_write_text(staging / "config.yaml", to_yaml(cfg))
        plot_pareto(frame, targets, staging / "pareto.png")
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: SlimConfig) -> Path:
    targets = check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sn_path, lut_path = pick_inputs(cfg)
    net, ckpt = load_supernet(sn_path)
    table = LatencyTable.load(lut_path)
    check_lut_covers(table, net, cfg.width_step)
    if cfg.bundle and table.meta["backend"] not in SUFFIX:  # refused before the search, not after it
        raise ConfigError(
            f"bundle= is for a LUT measured with {' or '.join(SUFFIX)}; this LUT was measured with "
            f"{table.meta['backend']} (use --verify where it runs)"
        )
    log.info("supernet %s (space %s), LUT %s (%s)", sn_path, net.space.name, lut_path, table.describe())
    log.info("LUT: %s", table.steadiness())
    check_reachable(net, table, targets, cfg.width_step)
    out = output_dir(cfg)
    val, bn = cached_batches(supernet_data_config(ckpt), cfg.val_images, cfg.bn_batches, cfg.batch_size, cfg.seed)
    evaluator = SubnetEvaluator(net, val, bn)
    t0 = time.time()
    traj, refills, verified, slimmer = search(cfg, targets, net, table, evaluator)
    wall = time.time() - t0
    ctx = {"net": net, "sn_path": sn_path, "table": table, "evaluator": evaluator}
    rows = write_outputs(cfg, out, targets, traj, refills, verified, ctx)
    print(summary_table(rows))
    print(f"{len(traj) - 1} steps, {slimmer.evaluations} evaluations, {wall:.1f} s; outputs in {out}")
    return out


# ---------------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str]) -> list[str]:
    """Turn the documented --flags into hydra overrides; key=value arguments pass through."""
    p = OneLineParser(prog="python -m nas.slim", description=__doc__.split("\n\n")[0])
    p.add_argument("--target-ms", nargs="+", type=float, metavar="MS", help="latency target(s) in ms")
    p.add_argument("--supernet", help="supernet.pt or its run folder (default: the newest supernet.pt under runs/)")
    p.add_argument("--lut", help="LUT CSV (default: the newest lut.csv under runs/)")
    p.add_argument("--out", help="output folder (default: runs/slim/<timestamp>)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="measure each emitted architecture on the LUT's backend; if over its target, emit the next state "
        "that is not",
    )
    p.add_argument("overrides", nargs="*", help="hydra overrides for search_configs/slim.yaml, e.g. val_images=1000")
    # key=value arguments are overrides wherever they stand: argparse alone would read the one after
    # `--target-ms 1.6` as another target (the value of --supernet/--lut/--out stays that flag's, '=' or not)
    paths = ("supernet", "lut", "out")  # the flags that take a value
    keyed = [
        i
        for i, t in enumerate(argv)
        if "=" in t and not t.startswith("-") and (i == 0 or argv[i - 1] not in {f"--{k}" for k in paths})
    ]
    a = p.parse_args([t for i, t in enumerate(argv) if i not in keyed])
    overrides = [argv[i] for i in keyed] + list(a.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognized argument {bad[0]!r}; overrides look like key=value")
    if a.target_ms is not None:
        overrides.append(f"target_ms=[{','.join(repr(t) for t in a.target_ms)}]")
    for key in paths:
        if getattr(a, key) is not None:
            overrides.append(f"{key}={getattr(a, key)}")
    if a.verify:
        overrides.append("verify=true")
    return overrides


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    overrides = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = compose("slim", overrides, SlimConfig)
    run(cfg)


if __name__ == "__main__":
    run_cli(main)
