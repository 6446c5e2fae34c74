"""The measured target kept: the emitted state of each target is the first that *measures* at or below it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from latency_lut.backends import Backend
from latency_lut.measure import MeasureConfig, measure_networks
from latency_lut.table import LatencyTable
from nas.search.slimmer import Slimmer
from nas.search.state import SlimState, Step, UnreachableTarget, first_at_or_below, slim_further
from supernet.arch import ArchSpec
from supernet.supernet import SuperNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verified:
    """The state emitted for a target under `--verify`, with its measured latency and what was skipped."""

    step: Step
    measured_ms: float
    skipped: tuple[tuple[int, float], ...]  # (step, measured ms) of earlier states that measured above the target
    refilled: tuple[Step, ...] = ()  # refill moves made under the measured latency, ending at `step` (`spend_budget`)
    origin: Step | None = None  # with `refilled`: the verified state they started from


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
            if not slim_further(traj, extend):
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


def spend_budget(
    v: Verified,
    target_ms: float,
    refill: Callable[[Step, float], list[Step]],
    measure: Callable[[list[SlimState]], list[float]],
    measured: dict[SlimState, float],
    slack: float = 0.02,
    tries: int = 3,
) -> Verified:
    """Use the latency a verified state leaves under its target, by measurement: refill it (`refill(step,
    predicted_target)`: restore MetaPaths, widen by 16, as `Slimmer.refill`) under the target converted into the
    LUT's units by the state's measured / predicted ratio, measure the refill's states together, and keep the
    furthest that measures at or below the target. Repeats from there, with the ratio of the state that measured
    over (so the next refill aims lower), until the state measures within `slack` of the target, no refill helps,
    or `tries` rounds are spent. A state is never emitted unmeasured, and never one measured above the target."""
    cur, moves = v, list(v.refilled)

    def grow(budget: float, below: float = math.inf) -> tuple[list[Step], list[int]]:
        """The refill under `budget` (predicted ms; only states predicted below `below`), measured together, and
        the positions of those measuring at or below the target."""
        steps = [s for s in refill(cur.step, budget) if s.latency_ms < below]
        todo = list(dict.fromkeys(s.state for s in steps if s.state not in measured))
        if todo:
            measured.update(zip(todo, measure(todo)))
        return steps, [k for k, s in enumerate(steps) if measured[s.state] <= target_ms]

    for _ in range(tries):
        if cur.measured_ms >= target_ms * (1 - slack):
            break
        steps, fits = grow(target_ms * cur.step.latency_ms / cur.measured_ms)
        if steps and not fits:  # the first move already measures over: aim lower by its ratio, from the same state
            over = steps[0]
            steps, fits = grow(target_ms * over.latency_ms / measured[over.state], below=over.latency_ms)
        if not fits:
            break
        last = max(fits)
        moves += steps[: last + 1]
        cur = Verified(steps[last], measured[steps[last].state], cur.skipped, tuple(moves), v.step)
    return cur


def plausible_bound(table: LatencyTable) -> float:
    """How far (relative) a measurement may lie from its prediction before it is re-measured rather than acted
    on: 10%, or three times the correction's 90th-percentile cross-validated error, or the machine's variation
    during the build, whichever is largest."""
    c, v = table.calibration, table.host_variation
    cv = c.cv_p90 if c is not None and math.isfinite(c.cv_p90) else 0.0
    return max(0.10, 3 * cv, v if math.isfinite(v) else 0.0)


def measure_states(
    specs: list[ArchSpec],
    table: LatencyTable,
    backend: Backend,
    measure_cfg: MeasureConfig,
    batch: int,
    seed: int = 0,
    retries: int = 2,
) -> list[float]:
    """Each spec measured with the table's calibration networks as references in every group, and read as the
    machine ran during the build (ms / its group's drift), which is what the table's predictions mean. A reading
    whose ratio to the prediction lies beyond `plausible_bound` is re-measured (the whole group again, so that it
    runs among as many networks as before), up to `retries` times; one that stays there is real and is kept."""
    refs = table.networks()
    bound = plausible_bound(table)
    pred = [table.predict(s) for s in specs]

    def once(k: int) -> list[float]:
        res = measure_networks(specs, backend, measure_cfg, batch, seed + k, references=refs)
        return [r["ms"] / r["drift"] for r in res]

    ms = once(0)
    for attempt in range(1, retries + 1):
        odd = [i for i, (m, p) in enumerate(zip(ms, pred)) if abs(m / p - 1) > bound]
        if not odd:
            break
        i = max(odd, key=lambda k: abs(ms[k] / pred[k] - 1))
        log.warning(
            "--verify: %d of %d states measured beyond the build's bound (x%.2f of the prediction), e.g. %s at "
            "%.4f ms against %.4f ms predicted (x%.2f); re-measuring (%d of %d)",
            len(odd),
            len(specs),
            1 + bound,
            specs[i].describe(),
            ms[i],
            pred[i],
            ms[i] / pred[i],
            attempt,
            retries,
        )
        again = once(attempt)
        for i in odd:
            ms[i] = again[i]
    return ms


def verify_targets(
    traj: list[Step],
    targets: list[float],
    slimmer: Slimmer,
    net: SuperNet,
    table: LatencyTable,
    backend: Backend,
    measure_cfg: MeasureConfig,
    batch: int,
    seed: int = 0,
    firsts: dict[float, Step] | None = None,
    start: SlimState | None = None,
) -> dict[float, Verified]:
    """For each target, its refilled state from `firsts` if it measures at or below the target, else the first
    trajectory state that does (see `verified_step`); then, given the search's `start`, the latency it leaves
    under the target is spent by measurement (`spend_budget`). States are measured by `measure_states` against
    `table`."""

    def measure(states: list[SlimState]) -> list[float]:
        specs = [net.spec_of(s.choices, s.widths) for s in states]
        return measure_states(specs, table, backend, measure_cfg, batch, seed)

    measured: dict[SlimState, float] = {}
    out = {}
    for t in targets:
        first = (firsts or {}).get(t)
        group = max(measure_cfg.interleave - measure_cfg.references, 1)  # states per group, beside the references
        v = verified_step(traj, t, measure, slimmer.extend, measured, group, first)
        if start is not None:
            used = v.measured_ms
            cap = v.step.val_loss + slimmer.rules.fill_tolerance  # fill moves stay within it of the verified state
            v = spend_budget(v, t, partial(slimmer.refill, start=start, loss_cap=cap), measure, measured)
            if v.refilled:
                log.info(
                    "--verify: target %g ms: refilled under the measured latency (%s): %.4f -> %.4f ms measured",
                    t,
                    ", ".join(f"{m.action} {m.where}" for m in v.refilled),
                    used,
                    v.measured_ms,
                )
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
