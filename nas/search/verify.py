"""The measured target kept: the emitted state of each target is the first that *measures* at or below it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from latency_lut.backends import Backend
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.table import LatencyTable
from nas.search.slimmer import Slimmer
from nas.search.state import SlimState, Step, UnreachableTarget, first_at_or_below
from supernet.supernet import SuperNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verified:
    """The state emitted for a target under `--verify`, with its measured latency and what was skipped."""

    step: Step
    measured_ms: float
    skipped: tuple[tuple[int, float], ...]  # (step, measured ms) of earlier states that measured above the target


def verified_step(
    traj: list[Step],
    target_ms: float,
    measure: Callable[[list[SlimState]], list[float]],
    extend: Callable[[list[Step]], Step],
    measured: dict[SlimState, float],
    batch: int = 8,
    first: Step | None = None,
) -> Verified:
    """The first state at or after the first predicted at or below `target_ms` whose *measured* latency is at or
    below it. States are measured `batch` at a time, in one interleaved group: a window of candidates, padded with
    the states just before it, so that every measurement sees a full group, as the latency table's own networks
    did (a smaller group runs on warmer caches and measures faster). `measured` caches results across targets.
    When every state has measured above the target, `extend` slims one more step. A `first` state (the refilled
    one) is tried before the trajectory, measured with the `batch - 1` states before the trajectory's first."""
    k = traj.index(first_at_or_below(traj, target_ms))
    skipped = []
    if first is not None:
        if first.state not in measured:
            group = list(dict.fromkeys([s.state for s in traj[max(0, k - batch + 1) : k]] + [first.state]))
            measured.update(zip(group, measure(group)))
        if measured[first.state] <= target_ms:
            return Verified(first, measured[first.state], ())
        skipped.append((first.step, measured[first.state]))
    while True:
        window = traj[k : k + batch]
        if not window:  # every state so far measured above the target: slim one step further
            n = len(traj)
            try:
                extend(traj)
            except UnreachableTarget:
                pass
            if len(traj) == n:
                raise UnreachableTarget(
                    f"target {target_ms:g} ms: no state of the slimming trajectory measures at or below it "
                    f"(the last, {traj[-1].state.describe()}, measured {measured[traj[-1].state]:.4g} ms)"
                )
            continue
        context = traj[max(0, k - (batch - len(window))) : k]
        if any(s.state not in measured for s in window):
            group = list(dict.fromkeys(s.state for s in context + window))
            measured.update(zip(group, measure(group)))
        for s in window:
            if measured[s.state] <= target_ms:
                return Verified(s, measured[s.state], tuple(skipped))
            skipped.append((s.step, measured[s.state]))
        k += len(window)


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
    measure_cfg: MeasureConfig,
    batch: int,
    seed: int = 0,
    firsts: dict[float, Step] | None = None,
) -> dict[float, Verified]:
    """For each target, its refilled state from `firsts` if it measures at or below the target, else the first
    trajectory state that does (see `verified_step`)."""

    def measure(states: list[SlimState]) -> list[float]:
        specs = [net.spec_of(s.choices, s.widths) for s in states]
        return [r["ms"] for r in measure_networks(specs, backend, measure_cfg, batch, seed)]

    measured: dict[SlimState, float] = {}
    out = {}
    for t in targets:
        first = (firsts or {}).get(t)
        v = verified_step(traj, t, measure, slimmer.extend, measured, max(measure_cfg.interleave, 1), first)
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
