"""`python -m nas.slim --target-ms 1.6`: slim a trained supernet to latency targets and emit EfficientViT configs.

    python -m nas.slim --target-ms 1.0                        # the newest supernet.pt and lut.csv under runs/
    python -m nas.slim --target-ms 0.6 0.8 1.0 --supernet runs/supernet/X/supernet.pt --lut luts/tiny.csv --out D
    python -m nas.slim --target-ms 1.0 val_images=1000 bn_batches=2 mb3d_action=mb4d   # hydra overrides
    python -m nas.slim --target-ms 1.0 0.8 --verify           # measure what is emitted; keep the target measured

One slimming trajectory serves every target: each target's config is the first state at or below it. Latency
comes from the LUT's (calibrated) prediction, accuracy from the supernet restricted to each candidate (its
weights physically sliced, BN statistics re-estimated on training batches) on the held-out validation split.

`--verify` measures each emitted architecture (the whole fused network, in interleaved rounds) on the LUT's
backend and settings, when that backend runs on this machine. A state that measures above its target is passed
over for the next trajectory state that measures at or below it (slimming further if the trajectory ends), and
the output says so; `arch.yaml` records `measured_ms` beside `predicted_ms`. Where the backend cannot run here
(CoreML on Linux, a LUT from another device), it says so in one line and emits the predicted state.

Outputs (written to a staging folder and moved into --out only when complete):
    target_<T>ms/arch.yaml, target_<T>ms/weights.pt, trajectory.csv, pareto.png, config.yaml
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from latency_lut.backends import Backend
from latency_lut.measure import MeasureConfig, measure_networks, space_rows, width_options
from latency_lut.table import LatencyTable, LUTError, spec_rows
from nas.arch import ArchSpec, atomic_write_text
from nas.checkpoint import SUPERNET_KIND, WEIGHTS_KIND, CheckpointError, load_checkpoint, save_atomic
from nas.config import ConfigError, OneLineParser, compose, setup_logging, to_yaml
from nas.data import DataConfig, build_datasets
from nas.errors import UserError, run_cli
from nas.slimming import (
    Choices,
    Slimmer,
    SlimState,
    Step,
    UnreachableTarget,
    Verified,
    first_at_or_below,
    verified_step,
)
from supernet.model import EfficientViT
from supernet.space import SpaceConfig
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
    threads: int = 2
    seed: int = 0
    overwrite: bool = False  # allow writing into an --out that already holds slimming results
    verify: bool = False  # measure each emitted architecture; emit the next state measuring <= target if it is over
    measure: MeasureConfig = field(default_factory=lambda: MeasureConfig(warmup=5, rounds=20, passes=2))  # --verify


# ------------------------------------------------------------------------------------------------ inputs
def newest(pattern: str, root: Path = Path("runs")) -> list[Path]:
    return sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)


SUPERNET_META = ("space", "num_classes", "config.data")  # what nas.slim reads from a supernet's meta


def load_supernet(path: Path) -> tuple[SuperNet, dict[str, Any]]:
    """A supernet checkpoint, each way it can be wrong reported as one line of its own: missing meta keys, a
    space that is not a valid space, a space that cannot build, or weights that do not fit the space."""
    ckpt = load_checkpoint(path, SUPERNET_KIND)
    meta = ckpt.get("meta")
    for key in SUPERNET_META:
        node = meta
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise CheckpointError(f"{path}: its meta lacks {key!r}; not a supernet written by nas.train_supernet")
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: holds no 'model' weights")

    def short(e: Exception) -> str:
        return " ".join(str(e).split())[:160]

    try:
        space = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SpaceConfig), meta["space"]))
    except Exception as e:  # omegaconf's errors: a wrong key or type in the stored space
        raise CheckpointError(f"{path}: its stored space is not a valid space ({short(e)})") from None
    try:
        net = SuperNet(space, int(meta["num_classes"]), int(meta.get("in_chans", 3)))
    except (UserError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its space {space.name!r} cannot be built ({short(e)})") from None
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing, unexpected or mis-shaped tensors
        raise CheckpointError(f"{path}: weights do not match its space {space.name!r} ({short(e)})") from None
    net.eval()
    return net, ckpt


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


def check_lut_covers(table: LatencyTable, net: SuperNet, step: int) -> None:
    """The LUT must price every spec the slimmer can reach: the supernet's block hyper-parameters (the table's
    fingerprint) and every row at the slimmer's width step."""
    if table.input_size != net.spec.input_size:
        raise LUTError(
            f"{table.source} was measured at {table.input_size} px but the supernet's space "
            f"({net.space.name}) is {net.spec.input_size} px"
        )
    table.check_fingerprint(net.spec)
    miss = table.missing_rows(space_rows(net.space, net.num_classes, step))
    if miss:
        raise LUTError(
            f"{table.source} does not cover the supernet's space {net.space.name} "
            f"(widths {net.space.widths}, width step {step}): {len(miss)} rows missing, e.g. {miss[0]}"
        )
    if table.calibration is None:
        log.warning("%s is uncalibrated: targets are compared with the raw sum of its rows", table.source)


# --------------------------------------------------------------------------------------------- evaluator
class SubnetEvaluator:
    """Accuracy of a slimming state: extract the sliced sub-network, re-estimate BN statistics on cached
    training batches, then evaluate on cached held-out validation batches."""

    def __init__(self, net: SuperNet, val: list[tuple[torch.Tensor, torch.Tensor]], bn: list[torch.Tensor]):
        self.net, self.val, self.bn = net, val, bn

    @torch.no_grad()
    def model(self, state: SlimState) -> EfficientViT:
        sub = self.net.extract(state.choices, state.widths)
        recalibrate_bn(sub, self.bn)
        return sub.eval()

    @torch.no_grad()
    def __call__(self, state: SlimState) -> float:
        return evaluate(self.model(state), self.val)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over `batches`."""
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    for x in batches:
        model(x)
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def cached_batches(data_cfg: DataConfig, cfg: SlimConfig):
    """Fixed validation and BN-calibration batches, loaded once (evaluation dominates the cost). Both are
    un-augmented images; the BN batches are drawn by a generator seeded with `cfg.seed`."""
    data_cfg = dataclasses.replace(data_cfg, augment=False, auto_augment=None)  # plain images, no random transform
    splits = build_datasets(data_cfg)
    n_val = min(cfg.val_images, len(splits.val))
    val_idx = list(range(n_val))
    g = torch.Generator().manual_seed(cfg.seed)
    bn_idx = torch.randperm(len(splits.train), generator=g)[: cfg.bn_batches * cfg.batch_size].tolist()

    def stack(ds, idx):
        items = [ds[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    vx, vy = stack(splits.val, val_idx)
    bx, _ = stack(splits.train, bn_idx)
    bs = cfg.batch_size
    val = [(vx[i : i + bs], vy[i : i + bs]) for i in range(0, len(vy), bs)]
    bn = [bx[i : i + bs] for i in range(0, len(bx), bs)]
    return val, bn


# ----------------------------------------------------------------------------------------------- outputs
def target_dirname(t: float) -> str:
    return f"target_{t:g}ms"


def trajectory_frame(traj: list[Step]) -> pd.DataFrame:
    rows = []
    for s in traj:
        depths = [sum(c != "id" for c in st) for st in s.state.choices]
        rows.append(
            {
                "step": s.step,
                "action": s.action,
                "where": s.where,
                "predicted_ms": s.latency_ms,
                "val_acc": s.val_acc,
                "score_pct_per_ms": s.score,
                "evaluations": s.evaluations,
                "depths": str(depths),
                "widths": str(list(s.state.widths)),
                "mb3d": str([sum(c == "3d" for c in st) for st in s.state.choices]),
                "choices": "|".join(",".join(st) for st in s.state.choices),
            }
        )
    return pd.DataFrame(rows)


def emitted_meta(
    step: Step, spec: ArchSpec, target: float, table: LatencyTable, sn_path: Path, measured: float | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "target_ms": target,
        "predicted_ms": round(step.latency_ms, 6),
        "measured_ms": None if measured is None else round(measured, 6),
        "val_acc": step.val_acc,
        "slimming_step": step.step,
        "depths": list(spec.depths),
        "widths": list(spec.widths),
        "mb3d_per_stage": list(spec.num_3d),
        "lut": {
            "path": str(Path(table.source).resolve()),
            "sha256_16": table.sha,
            "backend": table.meta["backend"],
            "device": table.meta["device"],
            "threads": table.meta["threads"],
            "batch": table.meta["batch"],
            "calibration_scale": None if table.calibration is None else round(table.calibration.scale, 6),
        },
        "supernet": str(sn_path.resolve()),
    }
    if spec.timm_incompatibility() is None:
        kw = spec.to_timm_kwargs()
        meta["timm"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    return meta


def load_weights(path: str | Path) -> tuple[ArchSpec, EfficientViT]:
    """A `weights.pt` written by nas.slim, loaded into `build_model(spec)`."""
    ckpt = load_checkpoint(path, WEIGHTS_KIND)
    spec = ArchSpec.from_dict(ckpt["spec"])
    model = EfficientViT(spec)
    model.load_state_dict(ckpt["model"])
    return spec, model.eval()


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'target':>8} {'predicted':>10} {'measured':>9} {'val acc':>8} {'step':>5}  architecture"
    lines = [head, "-" * len(head)]
    for r in rows:
        meas = f"{r['measured']:>7.3f}ms" if r["measured"] is not None else f"{'-':>9}"
        lines.append(
            f"{r['target']:>6g}ms {r['predicted']:>8.3f}ms {meas} {r['acc'] * 100:>7.2f}% {r['step']:>5}  {r['arch']}"
        )
    return "\n".join(lines)


def verify_backend(table: LatencyTable) -> Backend | None:
    """The LUT's backend if it runs here (`LatencyTable.local_backend`); else None, after saying why in one line."""
    backend, why = table.local_backend()
    if backend is None:
        log.warning("--verify: %s; emitting the predicted states unmeasured", why)
    return backend


def verify_targets(
    traj: list[Step],
    targets: list[float],
    slimmer: Slimmer,
    net: SuperNet,
    backend: Backend,
    cfg: SlimConfig,
    batch: int,
) -> dict[float, Verified]:
    """For each target, the first trajectory state whose measured latency is at or below it (see `verified_step`)."""

    def measure(states: list[SlimState]) -> list[float]:
        specs = [net.spec_of(s.choices, s.widths) for s in states]
        return [r["ms"] for r in measure_networks(specs, backend, cfg.measure, batch, cfg.seed)]

    measured: dict[SlimState, float] = {}
    out = {}
    for t in targets:
        v = verified_step(traj, t, measure, slimmer.extend, measured, batch=max(cfg.measure.interleave, 1))
        for step, ms in v.skipped:
            log.info("--verify: target %g ms: step %d measured %.4f ms, above the target; passed over", t, step, ms)
        if v.skipped:
            log.info(
                "--verify: target %g ms: emitting step %d instead (predicted %.4f ms, measured %.4f ms)",
                t,
                v.step.step,
                v.step.latency_ms,
                v.measured_ms,
            )
        out[t] = v
    return out


# ---------------------------------------------------------------------------------------------------- run
def validate_targets(targets: list[float]) -> list[float]:
    if not targets:
        raise ConfigError("give at least one latency target: --target-ms 1.6")
    for t in targets:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"target {t!r} ms: targets must be positive numbers")
    return sorted(set(float(t) for t in targets), reverse=True)


def min_latency(net: SuperNet, table: LatencyTable, step: int) -> tuple[float, ArchSpec]:
    """The smallest predicted latency in the space, exactly. Every row costs >= 0, so the minimum has one block;
    for each placement of it, the widths are chosen by dynamic programming: a network's rows split by stage,
    and stage k's rows depend only on its width and stage k-1's (through its embedding). Rows need not fall
    with width (measurements are not monotone), so the narrowest widths are not assumed to be the fastest."""
    opts = [width_options(w, step) for w in net.space.widths]
    cost = {r.key: table.raw_row(r) for r in space_rows(net.space, net.num_classes, step)}
    best: tuple[float, ArchSpec] | None = None
    for i in range(4):
        for code in (c for c in net.stage_choices[i] if c != "id"):
            choices = tuple(
                tuple(code if (k == i and j == 0) else "id" for j in range(d)) for k, d in enumerate(net.space.depths)
            )

            def stage_cost(k: int, prev: int, w: int, choices: Choices = choices) -> float:
                widths = [opts[0][0]] * 4
                widths[max(k - 1, 0)], widths[k] = prev, w
                return sum(cost[r.key] for r in spec_rows(net.spec_of(choices, tuple(widths))) if r.stage == k)

            # paths[w] = (cost so far, widths so far) for the cheapest prefix ending at width w
            paths = {w: (stage_cost(0, w, w), (w,)) for w in opts[0]}
            for k in range(1, 4):
                paths = {w: min((c + stage_cost(k, p, w), ws + (w,)) for p, (c, ws) in paths.items()) for w in opts[k]}
            _, widths = min(paths.values())
            spec = net.spec_of(choices, widths)
            lat = table.predict(spec)
            if best is None or lat < best[0]:
                best = (lat, spec)
    assert best is not None
    return best


def run(cfg: SlimConfig) -> Path:
    targets = validate_targets(list(cfg.target_ms))
    if cfg.mb3d_action not in ("identity", "mb4d"):
        raise ConfigError(f"mb3d_action={cfg.mb3d_action!r}; choose identity or mb4d")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sn_path, lut_path = pick_inputs(cfg)
    net, ckpt = load_supernet(sn_path)
    table = LatencyTable.load(lut_path)
    check_lut_covers(table, net, cfg.width_step)
    log.info("supernet %s (space %s), LUT %s (%s)", sn_path, net.space.name, lut_path, table.describe())
    floor, floor_spec = min_latency(net, table, cfg.width_step)
    if min(targets) < floor:
        raise UnreachableTarget(
            f"target {min(targets):g} ms is below the smallest latency this space reaches on "
            f"this LUT: {floor:.4g} ms (one block, narrowest widths: depths {floor_spec.depths})"
        )
    out = Path(cfg.out) if cfg.out else Path("runs/slim") / time.strftime("%Y%m%d-%H%M%S")
    if (out / "trajectory.csv").exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds slimming results; pass another --out or overwrite=true")

    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), ckpt["meta"]["config"]["data"]))
    val, bn = cached_batches(data_cfg, cfg)
    evaluator = SubnetEvaluator(net, val, bn)
    start = SlimState(net.derive(include_identity=False), tuple(net.space.widths))
    path_scores, _ = net.importance()

    def latency(state: SlimState) -> float:
        return table.predict(net.spec_of(state.choices, state.widths))

    from tqdm import tqdm

    bar = tqdm(desc="slimming", unit="step", dynamic_ncols=True)

    def on_step(s: Step) -> None:
        bar.update(1)
        bar.set_postfix(ms=f"{s.latency_ms:.3f}", acc=f"{s.val_acc:.4f}", evals=s.evaluations)
        log.info(
            "step %2d %-12s %-18s -> %.4f ms  val_acc %.4f  score %+.3g %%/ms",
            s.step,
            s.action,
            s.where,
            s.latency_ms,
            s.val_acc,
            s.score,
        )

    slimmer = Slimmer(
        latency, evaluator, path_scores, cfg.width_step, "id" if cfg.mb3d_action == "identity" else "4d", on_step
    )
    t0 = time.time()
    start_ms = latency(start)
    traj = slimmer.run(start, min(targets))
    verified: dict[float, Verified] = {}
    backend = verify_backend(table) if cfg.verify else None
    if backend is not None:
        verified = verify_targets(traj, targets, slimmer, net, backend, cfg, int(table.meta["batch"]))
    bar.close()
    wall = time.time() - t0

    out.parent.mkdir(parents=True, exist_ok=True)  # staging must sit on the same filesystem for os.replace
    staging = Path(tempfile.mkdtemp(prefix=".slim-staging-", dir=out.parent))
    try:
        rows = []
        for t in targets:
            step = verified[t].step if t in verified else first_at_or_below(traj, t)
            measured = verified[t].measured_ms if t in verified else None
            if step.step == 0:
                log.info(
                    "target %g ms is at or above the starting latency %.4g ms: emitting the unslimmed architecture",
                    t,
                    start_ms,
                )
            spec = net.spec_of(step.state.choices, step.state.widths)
            model = evaluator.model(step.state)
            d = staging / target_dirname(t)
            spec.save(d / "arch.yaml", extra=emitted_meta(step, spec, t, table, sn_path, measured))
            save_atomic(
                {
                    "kind": WEIGHTS_KIND,
                    "spec": spec.to_dict(),
                    "model": model.state_dict(),
                    "val_acc": step.val_acc,
                    "predicted_ms": step.latency_ms,
                    "measured_ms": measured,
                },
                d / "weights.pt",
            )
            rows.append(
                {
                    "target": t,
                    "predicted": step.latency_ms,
                    "measured": measured,
                    "acc": step.val_acc,
                    "step": step.step,
                    "arch": step.state.describe(),
                }
            )
        frame = trajectory_frame(traj)
        atomic_write_text(staging / "trajectory.csv", frame.to_csv(index=False))
        atomic_write_text(staging / "config.yaml", to_yaml(cfg))
        from nas.plots import plot_pareto

        plot_pareto(frame, targets, staging / "pareto.png")
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(summary_table(rows))
    print(f"{len(traj) - 1} steps, {slimmer.evaluations} evaluations, {wall:.1f} s; outputs in {out}")
    return out


def publish(staging: Path, out: Path) -> None:
    """Move each finished output from the staging folder into `out` (each move is a rename). Outputs of an
    earlier run in `out` (overwrite=true) are replaced as a set: its `target_*ms` folders that this run did not
    write are removed, so no stale architecture sits beside the new ones."""
    out.mkdir(parents=True, exist_ok=True)
    new = {item.name for item in staging.iterdir()}
    for old in out.glob("target_*ms"):
        if old.is_dir() and old.name not in new:
            shutil.rmtree(old)
    for item in sorted(staging.iterdir()):
        dest = out / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)


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
    a = p.parse_args(argv)
    overrides = list(a.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        p.error(f"unrecognized argument {bad[0]!r}; overrides look like key=value")
    if a.target_ms is not None:
        overrides.append(f"target_ms=[{','.join(repr(t) for t in a.target_ms)}]")
    for key in ("supernet", "lut", "out"):
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
