"""Which state each latency target gets, as pure functions of the search's record: the targets themselves
(checked, largest first), whether the space can reach them on a LUT, and per target the emitted step, its
measured latency and the moves that led to it (unit-tested in tests/test_slim.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from latency_lut.table import LatencyTable
from nas.search.bounds import min_latency
from nas.search.state import Step, UnreachableTarget, first_at_or_below
from nas.search.verify import Verified
from supernet.errors import ConfigError
from supernet.supernet import SuperNet


def validate_targets(targets: list[float]) -> list[float]:
    if not targets:
        raise ConfigError("give at least one latency target: --target-ms 1.6")
    for t in targets:
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"target {t!r} ms: targets must be positive numbers")
    return sorted(set(float(t) for t in targets), reverse=True)


def check_reachable(net: SuperNet, table: LatencyTable, targets: list[float], step: int) -> None:
    floor, floor_spec = min_latency(net, table, step)
    if min(targets) < floor:
        raise UnreachableTarget(
            f"target {min(targets):g} ms is below the smallest latency this space reaches on "
            f"this LUT: {floor:.4g} ms (one block, narrowest widths: depths {floor_spec.depths})"
        )


@dataclass(frozen=True)
class Emitted:
    """What one target gets: the step, its measured latency (None: not measured) and the moves after the
    trajectory's first state at or below the target that made it (refill, then refill under measured latency)."""

    target_ms: float
    step: Step
    measured_ms: float | None
    moves: tuple[str, ...]


def emitted(target: float, traj: list[Step], refill: list[Step], verified: Verified | None) -> Emitted:
    """The emitted step of `target`: the verified one where it was measured, else the last refill step, else the
    trajectory's first state at or below the target.

    Moves list the refill steps up to the emitted (or, verified, its origin) step, then those made under the
    measured latency."""
    if verified is not None:
        step, measured = verified.step, verified.measured_ms
    else:
        step, measured = (refill or [first_at_or_below(traj, target)])[-1], None
    base = verified.origin if verified is not None and verified.origin is not None else step
    moves = [f"{x.action} {x.where}" for x in refill[: refill.index(base) + 1]] if base in refill else []
    if verified is not None:
        moves += [f"{x.action} {x.where} (measured)" for x in verified.refilled]
    return Emitted(target, step, measured, tuple(moves))
