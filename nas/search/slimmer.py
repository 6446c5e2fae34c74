"""The latency-driven slimming engine (paper Section 4.2), with the fixes and additions of `Rules`.

The engine is ignorant of how latency and quality are obtained: it calls `latency(state)` (the LUT) and
`evaluate(state)` (the supernet restricted to the state, on held-out images; a `Score` whose `loss`, the mean
cross-entropy, is minimised), and it uses an importance ranking (the alpha-derived log-odds of
`SuperNet.importance`, or measured costs) only to decide *which* MetaPaths or stages an action touches.

A `SlimState` is the set of MetaPath choices ("4d" / "3d" / "id" per position) plus the stage widths; every
action maps one state to a new one:

  (a) drop_path     set one of the least important remaining MetaPaths to Identity;
  (b) remove_mb3d   remove the first MB3D in network order (to Identity by default; to MB4D as an option);
  (c) narrow_stage  reduce the width of one of the least important stages by 16.

Each step scores the candidates by the loss increase per millisecond saved and applies the lowest, until the
predicted latency is at or below the smallest target. Latency only decreases along the trajectory, so one run
serves every larger target. Two rule sets (`METHODS`):

- `paper`: Section 4.2 with four defects fixed (issue #13). (1) A stage's importance is the paper's sum over
  *all* its MetaPaths, so emptying a stage does not make it the least important one. (2) The score is the rise in
  validation cross-entropy on the same images per ms saved, not a difference of noisy top-1 values; an action that
  does not raise the loss counts as free (score 0, larger saving first), so a tiny saving with a lucky gain no
  longer beats a large one. (3) Importance is computed in log space and never overflows. (4) A candidate must save
  at least `min_saving_se` standard errors of its predicted saving (`LatencyTable.difference_se`); the least
  important MetaPath or stage *that clears this floor* is taken, so an action is not dead because its first choice
  saves nothing. One candidate per action, as in the paper.
- `default`: the same, plus what measured better (benchmarks/README.md, search quality): MetaPaths and stages
  are ranked by their *measured* cost (`importance="measured"`: each MetaPath of the start dropped and each stage
  narrowed once, the loss rise per ms saved, refreshed by every later step's candidates) instead of alpha, which
  carries little signal once identity is suppressed; the `per_action` least important MetaPaths and stages are
  each scored; when candidates reach the next target, the one with the lowest loss among them is taken (not the
  best ratio, which overshoots), and with `lookahead` the best-ratio candidates that fall short of it are each
  taken one step further, so that two cheap steps can win over one expensive finish; and `refill` spends the
  latency left under each target back by restoring MetaPaths or widening stages while the state stays under the
  target and the loss falls; a block too costly to restore is also tried with a stage narrowed (`trade`), a finer
  move than a whole block. Two more refill moves are options, off by default because they did not raise the share
  of the target `--verify` used (benchmarks/README.md section 6): `swap` also tries a restore with another MetaPath
  dropped, and `retype` sets a MetaPath to another block of its stage (MB4D <-> MB3D), which lowered the supernet's
  loss but also the latency spent. `fill`, off by default too, spends what is left: once no move lowers the loss,
  it takes the move that fits and adds the most latency while the loss stays within `fill_tolerance` of where the
  refill began (0.005 nats: the one from-scratch pair of states 0.008 nats apart trained to the same top-1, -0.02
  +- 0.16 points). On this space it found nothing to take: what a target leaves is less than a block
  (benchmarks/README.md section 6).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from nas.search.evaluator import Score
from nas.search.evolution import repair
from nas.search.state import SlimState, Step, UnreachableTarget
from supernet.space import first_mb3d, resized, with_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    per_action: int = 3  # candidates scored per action: the k least important MetaPaths / stages clearing the floor
    min_saving_se: float = 2.0  # floor on a candidate's saving, in standard errors of the predicted saving
    reach_best: bool = True  # among candidates reaching the next target, take the lowest loss
    refill: bool = True  # give leftover latency under each target back (restore MetaPaths, widen stages)
    trade: bool = True  # refill also tries a restore that does not fit with one stage narrowed by the width step
    swap: bool = False  # refill also tries a restore that does not fit with another MetaPath dropped (measured: off)
    retype: bool = False  # refill also sets a MetaPath to another block of its stage (MB4D <-> MB3D) (measured: off)
    fill: bool = False  # once no refill move lowers the loss, take the slowest that fits within `fill_tolerance`
    # (measured: off; no emitted state held a fill move, benchmarks/README.md section 6)
    fill_tolerance: float = 0.005  # nats above the loss the refill started from that a fill move may reach
    importance: str = "alpha"  # alpha: rank by the supernet's log-odds | measured: by measured loss rise per ms
    lookahead: int = 0  # with reach_best: best-ratio candidates short of the target also tried one step further


METHODS = {
    "paper": Rules(per_action=1, reach_best=False, refill=False),
    "default": Rules(importance="measured", lookahead=2),
}


@dataclass(frozen=True)
class Candidate:
    # drop_path | remove_mb3d | narrow_stage | restore_path | widen_stage | restore_narrow | restore_drop | retype
    action: str
    where: str  # e.g. "stage3.path2" or "stage2: 64->48"
    state: SlimState
    index: tuple[int, ...] = ()  # (stage, position) of a MetaPath, (stage,) of a stage


def drop_path_candidates(state: SlimState, path_scores: Sequence[Sequence[float]]) -> list[Candidate]:
    """(a) Every active MetaPath set to Identity, least important first (ties: the later position first).

    >>> s = SlimState((("4d", "4d"), ("4d",), ("3d",), ("3d",)), (16, 16, 16, 16))
    >>> [c.where for c in drop_path_candidates(s, [[5.0, 1.0], [9.0], [7.0], [8.0]])]
    ['stage1.path2', 'stage1.path1', 'stage3.path1', 'stage4.path1', 'stage2.path1']
    """
    if state.num_blocks <= 1:
        return []
    active = sorted(
        (path_scores[i][j], -i, -j) for i, s in enumerate(state.choices) for j, c in enumerate(s) if c != "id"
    )
    return [
        Candidate(
            "drop_path",
            f"stage{-i + 1}.path{-j + 1}",
            replace(state, choices=with_path(state.choices, -i, -j, "id")),
            (-i, -j),
        )
        for _, i, j in active
    ]


def remove_first_mb3d(state: SlimState, to: str = "id") -> list[Candidate]:
    """(b) The first MB3D in network order becomes Identity (`to="id"`) or MB4D (`to="4d"`); [] if none.

    >>> s = SlimState((("4d",), ("4d",), ("4d", "3d", "3d"), ("3d",)), (16, 16, 16, 16))
    >>> remove_first_mb3d(s)[0].state.choices[2]
    ('4d', 'id', '3d')
    """
    where = first_mb3d(state.choices)
    if where is None or (to == "id" and state.num_blocks <= 1):
        return []
    i, j = where
    return [
        Candidate(
            "remove_mb3d", f"stage{i + 1}.path{j + 1}", replace(state, choices=with_path(state.choices, i, j, to))
        )
    ]


def narrow_stage_candidates(state: SlimState, stage_scores: Sequence[float], step: int = 16) -> list[Candidate]:
    """(c) Every stage that can lose `step` channels, narrowed by `step`, least important first (ties: the later
    stage first). Stage importance is the paper's: over all of a stage's MetaPaths, active or not.

    >>> s = SlimState((("4d",), ("id", "id"), ("4d",), ("3d",)), (32, 32, 16, 64))
    >>> [c.where for c in narrow_stage_candidates(s, [5.0, 9.0, 0.5, 8.0])]
    ['stage1: 32->16', 'stage4: 64->48', 'stage2: 32->16']
    """
    order = sorted((stage_scores[i], -i) for i in range(len(state.widths)) if state.widths[i] - step >= step)
    out = []
    for _, ni in order:
        widths = resized(state.widths, -ni, -step)
        out.append(
            Candidate(
                "narrow_stage",
                f"stage{-ni + 1}: {state.widths[-ni]}->{widths[-ni]}",
                replace(state, widths=widths),
                (-ni,),
            )
        )
    return out


def grow_candidates(
    state: SlimState, start: SlimState, path_scores: Sequence[Sequence[float]], stage_scores: Sequence[float], step: int
) -> list[Candidate]:
    """The refill moves, most important first: restore a MetaPath that `start` had (as the block it had there,
    if MB3D stays a suffix), or widen a stage by `step` up to its width in `start`.

    >>> start = SlimState((("4d", "4d"), ("4d",), ("4d", "3d"), ("3d",)), (32, 32, 32, 32))
    >>> now = SlimState((("4d", "id"), ("4d",), ("4d", "id"), ("3d",)), (32, 16, 32, 32))
    >>> [c.where for c in grow_candidates(now, start, [[1, 2], [3], [4, 5], [6]], [1, 9, 2, 3], 16)]
    ['stage3.path2', 'stage1.path2', 'stage2: 16->32']
    """
    paths = []
    for i, (s, s0) in enumerate(zip(state.choices, start.choices)):
        for j, (c, c0) in enumerate(zip(s, s0)):
            if c == "id" and c0 != "id":
                new = with_path(state.choices, i, j, c0)
                if repair(new) == new:  # MB3D still a suffix of the stage
                    paths.append(
                        (
                            -path_scores[i][j],
                            i,
                            j,
                            Candidate("restore_path", f"stage{i + 1}.path{j + 1}", replace(state, choices=new), (i, j)),
                        )
                    )
    stages = []
    for i, (w, w0) in enumerate(zip(state.widths, start.widths)):
        if w + step <= w0:
            widened = replace(state, widths=resized(state.widths, i, step))
            stages.append((-stage_scores[i], i, Candidate("widen_stage", f"stage{i + 1}: {w}->{w + step}", widened)))
    return [p[-1] for p in sorted(paths, key=lambda p: p[:3])] + [s[-1] for s in sorted(stages, key=lambda s: s[:2])]


def retype_candidates(
    state: SlimState, start: SlimState, path_scores: Sequence[Sequence[float]], stage_choices: Sequence[Sequence[str]]
) -> list[Candidate]:
    """Every MetaPath set to another block its stage allows, most important first: an active one to the other
    block type ("stage4.path1: 3d->4d"), and one that `start` had and that is now Identity restored as a block
    other than `start`'s ("stage3.path2: id->4d"; `grow_candidates` restores it as `start`'s). MB3D stays a suffix
    of each stage. MB4D and MB3D cost different amounts, so this moves latency by less than a block, at full widths.

    >>> start, allowed = SlimState((("4d",), ("3d", "3d")), (16, 32)), [("4d", "id"), ("4d", "3d", "id")]
    >>> def where(blocks):
    ...     now = SlimState((("4d",), blocks), (16, 32))
    ...     return [c.where for c in retype_candidates(now, start, [[1], [3, 2]], allowed)]
    >>> where(("id", "3d"))
    ['stage2.path1: id->4d', 'stage2.path2: 3d->4d']
    >>> where(("3d", "id"))  # stage2.path2 as MB4D after an MB3D: not a suffix
    ['stage2.path1: 3d->4d']
    """
    found = []
    for i, (s, s0) in enumerate(zip(state.choices, start.choices)):
        for j, (c, c0) in enumerate(zip(s, s0)):
            if c0 == "id":
                continue
            for block in stage_choices[i]:
                if block in ("id", c) or (c == "id" and block == c0):
                    continue
                new = with_path(state.choices, i, j, block)
                if repair(new) == new:
                    cand = Candidate(
                        "retype", f"stage{i + 1}.path{j + 1}: {c}->{block}", replace(state, choices=new), (i, j)
                    )
                    found.append((-path_scores[i][j], i, j, cand))
    return [f[-1] for f in sorted(found, key=lambda f: f[:3])]


def trade_candidates(restores: Sequence[Candidate], stage_scores: Sequence[float], step: int) -> list[Candidate]:
    """Restores that do not fit under the target, each with one stage narrowed by `step` (least important stage
    first): a finer refill move than either alone, for when every block left to restore costs more than the latency
    left under the target (at full widths there is nothing to widen).

    >>> restored = SlimState((("4d", "4d"), ("4d",), (), ()), (32, 32, 16, 16))
    >>> [(c.action, c.where) for c in trade_candidates([Candidate("restore_path", "stage1.path2", restored)],
    ...                                                 [2.0, 1.0, 0.0, 0.0], 16)]
    [('restore_narrow', 'stage1.path2 + stage2: 32->16'), ('restore_narrow', 'stage1.path2 + stage1: 32->16')]
    """
    return [
        Candidate("restore_narrow", f"{r.where} + {n.where}", n.state)
        for r in restores
        for n in narrow_stage_candidates(r.state, stage_scores, step)
    ]


def swap_candidates(restores: Sequence[Candidate], path_scores: Sequence[Sequence[float]]) -> list[Candidate]:
    """Restores that do not fit under the target, each with another MetaPath dropped (least important first): a
    block-for-block exchange, whose latency moves by the difference of two blocks' costs, so it is finer than a
    restore where blocks of different stages cost different amounts, and it keeps full widths.

    >>> restored = SlimState((("4d", "4d"), ("4d",), ("3d",), ()), (32, 32, 16, 16))
    >>> [c.where for c in swap_candidates([Candidate("restore_path", "stage1.path2", restored, (0, 1))],
    ...                                   [[5.0, 1.0], [9.0], [7.0], []])]
    ['stage1.path2 - stage1.path1', 'stage1.path2 - stage3.path1', 'stage1.path2 - stage2.path1']
    """
    return [
        Candidate("restore_drop", f"{r.where} - {d.where}", d.state)
        for r in restores
        for d in drop_path_candidates(r.state, path_scores)
        if d.index != r.index
    ]


@dataclass
class Slimmer:
    latency: Callable[[SlimState], float]
    evaluate: Callable[[SlimState], Score]
    path_scores: Sequence[Sequence[float]]  # per MetaPath, log-odds of keeping it
    stage_scores: Sequence[float]  # per stage, over all its MetaPaths
    rules: Rules = field(default_factory=Rules)
    saving_se: Callable[[SlimState, SlimState], float] | None = None  # SE of a predicted saving; None: no floor
    width_step: int = 16
    mb3d_to: str = "id"
    on_step: Callable[[Step], None] | None = None
    stage_choices: Sequence[Sequence[str]] | None = None  # the blocks each stage allows (`Rules.retype` needs them)

    def __post_init__(self) -> None:
        self._cache: dict[SlimState, Score] = {}
        if self.rules.importance not in ("alpha", "measured"):
            raise ValueError(f"importance={self.rules.importance!r}: alpha or measured")
        self.path_scores = [list(row) for row in self.path_scores]  # `measured` rewrites them as it learns
        self.stage_scores = list(self.stage_scores)

    def measure_importance(self, start: Step) -> None:
        """`importance="measured"`: rank MetaPaths and stages by what removing them costs, not by alpha. Every
        MetaPath of `start` is dropped and every stage narrowed by one step, once, and each gets the loss rise
        per ms saved (a higher cost = more important; no saving = most important). The scored states are cached,
        so the first step re-uses them; later steps refresh the entries of the candidates they score."""
        lat = start.latency_ms
        options = drop_path_candidates(start.state, self.path_scores) + narrow_stage_candidates(
            start.state, self.stage_scores, self.width_step
        )
        for cand in options:
            self._learn(cand, lat - self.latency(cand.state), self.score(cand.state).loss - start.val_loss)

    def _learn(self, cand: Candidate, saved: float, loss_rise: float) -> None:
        if self.rules.importance != "measured" or cand.action not in ("drop_path", "narrow_stage"):
            return
        cost = loss_rise / saved if saved > 0 else math.inf
        if cand.action == "drop_path":
            self.path_scores[cand.index[0]][cand.index[1]] = cost
        else:
            self.stage_scores[cand.index[0]] = cost

    @property
    def evaluations(self) -> int:
        return len(self._cache)

    def score(self, state: SlimState) -> Score:
        if state not in self._cache:
            self._cache[state] = self.evaluate(state)
        return self._cache[state]

    def _floor(self, a: SlimState, b: SlimState) -> float:
        if self.saving_se is None or self.rules.min_saving_se <= 0:
            return 0.0
        return self.rules.min_saving_se * self.saving_se(a, b)

    def candidates(self, state: SlimState, floor: bool = True) -> list[tuple[Candidate, float]]:
        """Per action, the first `per_action` candidates (in importance order) whose predicted saving is positive
        and, with `floor`, at least the noise floor; each with its latency."""
        lat = self.latency(state)
        ranked = [
            drop_path_candidates(state, self.path_scores),
            remove_first_mb3d(state, self.mb3d_to),
            narrow_stage_candidates(state, self.stage_scores, self.width_step),
        ]
        out = []
        for options in ranked:
            taken = 0
            for cand in options:
                if taken == self.rules.per_action:
                    break
                c_lat = self.latency(cand.state)
                if lat - c_lat > 0 and (not floor or lat - c_lat >= self._floor(state, cand.state)):
                    out.append((cand, c_lat))
                    taken += 1
        return out

    def run(self, start: SlimState, targets: float | Sequence[float]) -> list[Step]:
        """Slim from `start` until the predicted latency is at or below the smallest target; the whole trajectory,
        start first."""
        targets = sorted([targets] if isinstance(targets, (int, float)) else targets, reverse=True)
        s0 = self.score(start)
        traj = [Step(0, "start", "", self.latency(start), s0.loss, s0.top1, math.nan, start, self.evaluations)]
        self._emit(traj[-1])
        if self.rules.importance == "measured" and traj[-1].latency_ms > targets[-1]:
            self.measure_importance(traj[-1])
        while traj[-1].latency_ms > targets[-1]:
            self.extend(traj, next(t for t in targets if t < traj[-1].latency_ms), goal=targets[-1])
        return traj

    def extend(self, traj: list[Step], target_ms: float | None = None, goal: float | None = None) -> Step:
        """Apply the best action to the trajectory's last state, append the new step and return it. `target_ms`
        is the next target to reach (for `reach_best`); `goal` the smallest, for the error message."""
        last = traj[-1]
        cands = self._options(last.state)
        if not cands:
            goal = goal if goal is not None else target_ms
            head = f"target {goal:g} ms cannot be reached: " if goal is not None else ""
            raise UnreachableTarget(
                f"{head}slimming stopped at {last.latency_ms:.4g} ms ({last.state.describe()}), where no action "
                f"lowers the predicted latency further"
            )
        scored = self._scored(last.latency_ms, last.val_loss, cands)
        reaching = [x for x in scored if target_ms is not None and x[3] <= target_ms]
        if self.rules.reach_best and reaching:
            finishes = [[x] for x in reaching] + self._lookahead(scored, target_ms)
            path = min(finishes, key=lambda f: (f[-1][4].loss, -f[-1][3]))
        else:
            path = [min(scored, key=lambda x: x[:2])]
        for ratio, _, cand, lat, s in path:
            traj.append(
                Step(len(traj), cand.action, cand.where, lat, s.loss, s.top1, ratio, cand.state, self.evaluations)
            )
            self._emit(traj[-1])
        return traj[-1]

    def _options(self, state: SlimState) -> list[tuple[Candidate, float]]:
        """The candidates clearing the noise floor; if none does, every one with a positive saving."""
        return self.candidates(state) or self.candidates(state, floor=False)

    def _scored(self, lat: float, loss: float, cands: list[tuple[Candidate, float]]) -> list[tuple]:
        """Each candidate of a state at `lat` ms and `loss` as (loss rise per ms saved, -saved, candidate, its
        latency, its score), recording its measured cost for `importance="measured"`."""
        out = []
        for cand, c_lat in cands:
            s = self.score(cand.state)
            saved = lat - c_lat
            out.append((max(s.loss - loss, 0.0) / saved, -saved, cand, c_lat, s))
            self._learn(cand, saved, s.loss - loss)
        return out

    def _lookahead(self, scored: list, target_ms: float) -> list[list]:
        """`Rules.lookahead`: on the step that can reach `target_ms`, the `lookahead` best-ratio candidates that
        do not reach it are each taken one step further; every two-step finish that reaches the target is
        returned (as its two scored entries), to compete by loss with the one-step finishes."""
        out = []
        short = sorted((x for x in scored if x[3] > target_ms), key=lambda x: x[:2])
        for first in short[: self.rules.lookahead]:
            _, _, mid, mid_lat, mid_s = first
            reaching = [(cand, c_lat) for cand, c_lat in self._options(mid.state) if c_lat <= target_ms]
            out += [[first, second] for second in self._scored(mid_lat, mid_s.loss, reaching)]
        return out

    def refill(self, step: Step, target_ms: float, start: SlimState, loss_cap: float | None = None) -> list[Step]:
        """Spend the latency left under `target_ms` back: score the `per_action` most important restorable
        MetaPaths and widenable stages (`grow_candidates`) that keep the state at or below the target, with
        `trade` as many restores that do not fit, each with a stage narrowed (`trade_candidates`), with `swap`
        as many, each with another MetaPath dropped (`swap_candidates`), and with `retype` (given the
        `stage_choices`) as many MetaPaths set to another block of their stage (`retype_candidates`); take the
        lowest loss if it beats the current one, repeat. With `fill`, when none does, take the slowest candidate
        that is slower than the current state and whose loss is at most `loss_cap` (default: `step`'s loss plus
        `fill_tolerance`), marked "(fill)", and go on. No state is visited twice. The steps taken, in order (none
        if nothing helped, or if the rules have no refill)."""
        out, cur = [], step
        if not self.rules.refill:
            return out
        cap = step.val_loss + self.rules.fill_tolerance if loss_cap is None else loss_cap
        seen = {step.state}
        while True:
            kinds: dict[str, int] = {}
            grow = grow_candidates(cur.state, start, self.path_scores, self.stage_scores, self.width_step)
            fits, over = self._fitting(grow, target_ms, kinds)
            if self.rules.trade:
                fits += self._fitting(trade_candidates(over, self.stage_scores, self.width_step), target_ms, kinds)[0]
            if self.rules.swap:
                fits += self._fitting(swap_candidates(over, self.path_scores), target_ms, kinds)[0]
            if self.rules.retype and self.stage_choices is not None:
                retypes = retype_candidates(cur.state, start, self.path_scores, self.stage_choices)
                fits += self._fitting(retypes, target_ms, kinds)[0]
            fits = [(c, lat) for c, lat in fits if c.state not in seen]
            if not fits:
                return out
            scored = [(self.score(c.state), -lat, c) for c, lat in fits]
            s, neg_lat, cand = min(scored, key=lambda x: (x[0].loss, x[1]))
            where = cand.where
            if s.loss >= cur.val_loss:
                slower = [x for x in scored if -x[1] > cur.latency_ms and x[0].loss <= cap] if self.rules.fill else []
                if not slower:
                    return out
                s, neg_lat, cand = min(slower, key=lambda x: (x[1], x[0].loss))  # the most latency, then the loss
                where = f"{cand.where} (fill)"
            seen.add(cand.state)
            cur = Step(cur.step, cand.action, where, -neg_lat, s.loss, s.top1, math.nan, cand.state, self.evaluations)
            out.append(cur)
            self._emit(cur)

    def _fitting(
        self, cands: list[Candidate], target_ms: float, kinds: dict[str, int]
    ) -> tuple[list[tuple[Candidate, float]], list[Candidate]]:
        """The first `per_action` candidates of each action (counted in `kinds`) that fit under the target, each
        with its latency, and the restores that do not fit (the trades start from them)."""
        fits, over = [], []
        for cand in cands:
            if kinds.get(cand.action, 0) == self.rules.per_action:
                continue
            c_lat = self.latency(cand.state)
            if c_lat <= target_ms:
                fits.append((cand, c_lat))
                kinds[cand.action] = kinds.get(cand.action, 0) + 1
            elif cand.action == "restore_path":
                over.append(cand)
        return fits, over

    def _emit(self, step: Step) -> None:
        if self.on_step is not None:
            self.on_step(step)
