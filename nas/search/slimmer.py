"""The latency-driven slimming engine (paper Section 4.2).

The engine is ignorant of how latency and accuracy are obtained: it calls `latency(state)` (the LUT) and
`accuracy(state)` (the supernet restricted to the state, on held-out data), and it uses the alpha-derived
importance scores only to decide *which* MetaPath or stage each action touches.

A `SlimState` is the set of MetaPath choices ("4d" / "3d" / "id" per position) plus the stage widths; every
action maps one state to a new one (or None when it does not apply):

  (a) drop_path     set the least important remaining MetaPath to Identity;
  (b) remove_mb3d   remove the first MB3D in network order (to Identity by default; to MB4D as an option);
  (c) narrow_stage  reduce the width of the least important stage by 16.

Each step scores every applicable action by accuracy drop (percentage points) per millisecond saved, an
accuracy gain counting as a negative drop, and applies the lowest, until the predicted latency is at or below
the smallest target. Latency only decreases along the trajectory, so one run serves every larger target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from nas.search.state import SlimState, Step, UnreachableTarget
from supernet.space import Choices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    action: str  # drop_path | remove_mb3d | narrow_stage
    where: str  # e.g. "stage3.path2" or "stage2: 64->48"
    state: SlimState


def _set_choice(choices: Choices, stage: int, pos: int, code: str) -> Choices:
    out = [list(s) for s in choices]
    out[stage][pos] = code
    return tuple(tuple(s) for s in out)


def drop_least_important_path(state: SlimState, path_scores: Sequence[Sequence[float]]) -> Candidate | None:
    """(a) The active MetaPath with the lowest importance becomes Identity (ties: the later position).

    >>> s = SlimState((("4d", "4d"), ("4d",), ("3d",), ("3d",)), (16, 16, 16, 16))
    >>> drop_least_important_path(s, [[5.0, 1.0], [9.0], [7.0], [8.0]]).state.choices[0]
    ('4d', 'id')
    """
    if state.num_blocks <= 1:
        return None
    active = [(path_scores[i][j], -i, -j) for i, s in enumerate(state.choices) for j, c in enumerate(s) if c != "id"]
    _, ni, nj = min(active)
    i, j = -ni, -nj
    return Candidate(
        "drop_path", f"stage{i + 1}.path{j + 1}", replace(state, choices=_set_choice(state.choices, i, j, "id"))
    )


def remove_first_mb3d(state: SlimState, to: str = "id") -> Candidate | None:
    """(b) The first MB3D in network order becomes Identity (`to="id"`) or MB4D (`to="4d"`).

    >>> s = SlimState((("4d",), ("4d",), ("4d", "3d", "3d"), ("3d",)), (16, 16, 16, 16))
    >>> remove_first_mb3d(s).state.choices[2]
    ('4d', 'id', '3d')
    """
    for i, s in enumerate(state.choices):
        for j, c in enumerate(s):
            if c == "3d":
                if to == "id" and state.num_blocks <= 1:
                    return None
                return Candidate(
                    "remove_mb3d",
                    f"stage{i + 1}.path{j + 1}",
                    replace(state, choices=_set_choice(state.choices, i, j, to)),
                )
    return None


def narrow_least_important_stage(
    state: SlimState, path_scores: Sequence[Sequence[float]], step: int = 16
) -> Candidate | None:
    """(c) The stage with the lowest importance (sum over its active MetaPaths) that can still lose `step`
    channels is narrowed by `step` (ties: the later stage).

    >>> s = SlimState((("4d",), ("4d", "id"), ("4d",), ("3d",)), (32, 32, 16, 64))
    >>> narrow_least_important_stage(s, [[5.0], [1.0, 9.0], [0.5], [8.0]]).state.widths
    (32, 16, 16, 64)
    """
    scores = [
        (sum(path_scores[i][j] for j, c in enumerate(s) if c != "id"), -i)
        for i, s in enumerate(state.choices)
        if state.widths[i] - step >= step
    ]
    if not scores:
        return None
    i = -min(scores)[1]
    widths = list(state.widths)
    widths[i] -= step
    return Candidate(
        "narrow_stage", f"stage{i + 1}: {state.widths[i]}->{widths[i]}", replace(state, widths=tuple(widths))
    )


@dataclass
class Slimmer:
    latency: Callable[[SlimState], float]
    accuracy: Callable[[SlimState], float]
    path_scores: Sequence[Sequence[float]]
    width_step: int = 16
    mb3d_to: str = "id"
    on_step: Callable[[Step], None] | None = None

    def __post_init__(self) -> None:
        self._acc_cache: dict[SlimState, float] = {}

    @property
    def evaluations(self) -> int:
        return len(self._acc_cache)

    def acc(self, state: SlimState) -> float:
        if state not in self._acc_cache:
            self._acc_cache[state] = self.accuracy(state)
        return self._acc_cache[state]

    def candidates(self, state: SlimState) -> list[Candidate]:
        found = [
            drop_least_important_path(state, self.path_scores),
            remove_first_mb3d(state, self.mb3d_to),
            narrow_least_important_stage(state, self.path_scores, self.width_step),
        ]
        return [c for c in found if c is not None]

    def run(self, start: SlimState, target_ms: float) -> list[Step]:
        """Slim from `start` until the predicted latency is <= target_ms; the whole trajectory, start first."""
        traj = [Step(0, "start", "", self.latency(start), self.acc(start), math.nan, start, self.evaluations)]
        self._emit(traj[-1])
        while traj[-1].latency_ms > target_ms:
            self.extend(traj, target_ms)
        return traj

    def extend(self, traj: list[Step], target_ms: float | None = None) -> Step:
        """Apply the best action to the trajectory's last state, append the new step and return it."""
        last = traj[-1]
        state, lat, acc = last.state, last.latency_ms, last.val_acc
        best = None
        for cand in self.candidates(state):
            c_lat = self.latency(cand.state)
            saved = lat - c_lat
            if saved <= 0:
                continue
            c_acc = self.acc(cand.state)
            score = (acc - c_acc) * 100 / saved
            if best is None or (score, -saved) < (best[0], -best[1]):
                best = (score, saved, cand, c_lat, c_acc)
        if best is None:
            goal = f"target {target_ms:g} ms cannot be reached: " if target_ms is not None else ""
            raise UnreachableTarget(
                f"{goal}slimming stopped at {lat:.4g} ms ({state.describe()}), where no action lowers the "
                f"predicted latency further"
            )
        score, _, cand, lat, acc = best
        traj.append(Step(len(traj), cand.action, cand.where, lat, acc, score, cand.state, self.evaluations))
        self._emit(traj[-1])
        return traj[-1]

    def _emit(self, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(step)
