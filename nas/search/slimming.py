"""Slimming as a library call: `slim(cfg, supernet_path, lut_path)` loads both, checks the LUT covers the
supernet's space and that the targets are reachable, runs one slimming trajectory for every target (with
`verify`, or remote verify, on the measured latency), and writes each target's arch.yaml and weights.pt, the
trajectory, the config and the Pareto plot into `cfg.out` as a set. `python -m nas.slim` is its command line.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from latency_lut.bundle import SUFFIX
from latency_lut.measure import MeasureConfig, width_options
from latency_lut.table import LatencyTable
from nas.config import to_yaml
from nas.search.evaluator import Score, SubnetEvaluator, cached_batches
from nas.search.evolution import Evolution, EvolutionConfig
from nas.search.latency import StateLatency
from nas.search.loading import check_lut_covers, load_supernet, supernet_data_config
from nas.search.remote import remote_verify
from nas.search.report import emitted_meta, publish, summary_table, target_dirname, trajectory_frame, write_target
from nas.search.slimmer import METHODS, Rules, Slimmer
from nas.search.state import SlimState, Step, first_at_or_below
from nas.search.targets import check_reachable, emitted, validate_targets
from nas.search.verify import Verified, verify_backend, verify_targets
from supernet.arch import ArchSpec
from supernet.devices import resolve_device
from supernet.errors import ConfigError, UserError
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
    device: str = "auto"  # where candidates are scored: auto (a GPU when CUDA is available, else cpu), cpu, cuda[:N]
    seed: int = 0
    overwrite: bool = False  # allow writing into an --out that already holds slimming results
    verify: bool = False  # measure each emitted architecture; emit the next state measuring <= target if it is over
    bundle: str | None = None  # remote verify: write each target's candidate states into a device bundle (DIR)
    from_timings: str | None = None  # remote verify: that bundle, timed on the device; emit what measured <= target
    # as nas.build_lut times its calibration networks (the same statistic, so the calibration carries over)
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # --verify


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


def output_dir(cfg: SlimConfig) -> Path:
    out = Path(cfg.out) if cfg.out else Path("runs/slim") / time.strftime("%Y%m%d-%H%M%S")
    if (out / "trajectory.csv").exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds slimming results; pass another --out or overwrite=true")
    return out


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


@dataclass
class SearchStack:
    """A supernet and a LUT made ready to search: the LUT's prediction of any state, and the start state (the
    supernet's derived path at full widths). Slimming, evolution and random search are built from it, by
    `nas.slim` and by the benchmarks alike."""

    net: SuperNet
    table: LatencyTable

    def __post_init__(self) -> None:
        self.latency = StateLatency(self.net, self.table)
        self.start = SlimState(self.net.derive(include_identity=False), tuple(self.net.space.widths))

    def slimmer(
        self,
        evaluate: Callable[[SlimState], Score],
        rules: Rules | str = "default",
        width_step: int = 16,
        mb3d_to: str = "id",
        on_step: Callable[[Step], None] | None = None,
    ) -> Slimmer:
        """The slimmer over this supernet, scoring states with `evaluate`, ranking by alpha importance."""
        path_scores, stage_scores = self.net.importance()
        rules = METHODS[rules] if isinstance(rules, str) else rules
        return Slimmer(
            self.latency,
            evaluate,
            path_scores,
            stage_scores,
            rules,
            self.latency.saving_se,
            width_step,
            mb3d_to,
            on_step,
            self.net.stage_choices,
        )

    def evolution(self, evaluate: Callable[[SlimState], Score], cfg: EvolutionConfig | None = None) -> Evolution:
        """Evolution and random search over the same space, states and latency (the baselines)."""
        widths = [width_options(w) for w in self.net.space.widths]
        space = self.net.space
        return Evolution(self.latency, evaluate, self.net.stage_choices, space.depths, widths, cfg or EvolutionConfig())


def search(
    cfg: SlimConfig, targets: list[float], net: SuperNet, table: LatencyTable, evaluator: SubnetEvaluator
) -> tuple[list[Step], dict[float, list[Step]], dict[float, Verified], Slimmer]:
    """One slimming trajectory down to the smallest target; per target, the refill steps after its first state
    at or below it; with `verify`, each target's measured state."""
    stack = SearchStack(net, table)
    mb3d_to = "id" if cfg.mb3d_action == "identity" else "4d"
    with tqdm(desc=f"slimming ({cfg.method})", unit="step", dynamic_ncols=True) as bar:
        slimmer = stack.slimmer(evaluator, cfg.method, cfg.width_step, mb3d_to, progress_reporter(bar))
        start = stack.start
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
            verified = verify_targets(
                traj, targets, slimmer, net, table, backend, cfg.measure, batch, cfg.seed, firsts, start
            )
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
            e = emitted(t, traj, refills[t], verified.get(t))
            step, measured = e.step, e.measured_ms
            if step.step == 0:
                log.info(
                    "target %g ms is at or above the starting latency %.4g ms: emitting the unslimmed architecture",
                    t,
                    traj[0].latency_ms,
                )
            spec = net.spec_of(step.state.choices, step.state.widths)
            meta = emitted_meta(step, spec, t, table, ctx["sn_path"], measured)
            meta.update(method=cfg.method, refill=list(e.moves))
            write_target(staging / target_dirname(t), step, spec, evaluator.model(step.state).cpu(), meta)
            rows.append(
                {
                    "target": t,
                    "predicted": step.latency_ms,
                    "measured": measured,
                    "loss": step.val_loss,
                    "acc": step.val_acc,
                    "step": step.step,
                    "arch": step.state.describe(),
                    "spec": spec,
                    "arch_yaml": out / target_dirname(t) / "arch.yaml",
                    "weights": out / target_dirname(t) / "weights.pt",
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


@dataclass
class SlimResult:
    """What `slim` found: one row per target (target, predicted, measured, loss, acc, step, arch), the output
    folder, and the search's cost."""

    rows: list[dict[str, Any]]
    out: Path
    steps: int
    evaluations: int
    wall_s: float

    def summary(self) -> str:
        return summary_table(self.rows)

    @property
    def specs(self) -> list[ArchSpec]:
        """The found architectures, largest target first."""
        return [r["spec"] for r in self.rows]

    @property
    def arch_paths(self) -> list[Path]:
        """Each target's arch.yaml (what `python -m nas.train arch=` takes), largest target first."""
        return [r["arch_yaml"] for r in self.rows]


def slim(cfg: SlimConfig, supernet: str | Path, lut: str | Path) -> SlimResult:
    """Slim the supernet at `supernet` to every target of `cfg` on the LUT at `lut`; write the outputs."""
    targets = check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    sn_path, lut_path = Path(supernet), Path(lut)
    device = resolve_device(cfg.device, "device")
    net, ckpt = load_supernet(sn_path)
    net.to(device)
    table = LatencyTable.load(lut_path)
    check_lut_covers(table, net, cfg.width_step)
    if cfg.bundle and table.meta["backend"] not in SUFFIX:  # refused before the search, not after it
        raise ConfigError(
            f"bundle= is for a LUT measured with {' or '.join(SUFFIX)}; this LUT was measured with "
            f"{table.meta['backend']} (use --verify where it runs)"
        )
    log.info("supernet %s (space %s) on %s, LUT %s (%s)", sn_path, net.space.name, device, lut_path, table.describe())
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
    return SlimResult(rows, out, len(traj) - 1, slimmer.evaluations, wall)
