"""Baselines over the same states, LUT latency and supernet evaluator as the slimmer, under a fixed budget of
evaluations: an evolutionary search (once-for-all style: population, mutation, crossover) and plain random search.

Like the slimmer they only call `latency(state)` and `evaluate(state)` (a `Score`), and minimise the same
criterion, the validation cross-entropy. Candidates above the latency target are rejected before evaluation
(they cost no evaluation); the best evaluated state is returned.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nas.search.evaluator import Score
from nas.search.state import SlimState
from supernet.space import Choices


@dataclass
class EvolutionConfig:
    population: int = 16
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5  # share of children made by mutation; the rest by crossover
    mutate_prob: float = 0.2  # per MetaPath choice and per stage width
    seed: int = 0
    max_tries: int = 2000  # rejection-sampling attempts per child before giving up


def repair(choices: Choices) -> Choices:
    """Make MB3D a suffix of each stage (a 4d after the stage's first 3d becomes 3d).

    >>> repair((("4d",), ("id",), ("3d", "4d", "id"), ("4d", "3d")))
    (('4d',), ('id',), ('3d', '3d', 'id'), ('4d', '3d'))
    """
    out = []
    for stage in choices:
        seen_3d, fixed = False, []
        for c in stage:
            seen_3d = seen_3d or c == "3d"
            fixed.append("3d" if seen_3d and c == "4d" else c)
        out.append(tuple(fixed))
    return tuple(out)


class Evolution:
    def __init__(
        self,
        latency: Callable[[SlimState], float],
        evaluate: Callable[[SlimState], Score],
        stage_choices: Sequence[Sequence[str]],
        depths: Sequence[int],
        width_options: Sequence[Sequence[int]],
        cfg: EvolutionConfig | None = None,
    ):
        self.latency, self.evaluate = latency, evaluate
        self.stage_choices, self.depths, self.width_options = stage_choices, depths, width_options
        self.cfg = cfg or EvolutionConfig()
        self.rng = random.Random(self.cfg.seed)
        self.scores: dict[SlimState, Score] = {}

    def _valid(self, choices: Choices) -> bool:
        return any(c != "id" for s in choices for c in s)

    def random_state(self) -> SlimState:
        r = self.rng
        choices = repair(
            tuple(tuple(r.choice(opts) for _ in range(d)) for opts, d in zip(self.stage_choices, self.depths))
        )
        return SlimState(choices, tuple(r.choice(w) for w in self.width_options))

    def mutate(self, s: SlimState) -> SlimState:
        r, p = self.rng, self.cfg.mutate_prob
        choices = repair(
            tuple(
                tuple(r.choice(opts) if r.random() < p else c for c in stage)
                for stage, opts in zip(s.choices, self.stage_choices)
            )
        )
        widths = tuple(r.choice(opts) if r.random() < p else w for w, opts in zip(s.widths, self.width_options))
        return SlimState(choices, widths)

    def crossover(self, a: SlimState, b: SlimState) -> SlimState:
        pick = [self.rng.random() < 0.5 for _ in a.choices]
        return SlimState(
            tuple(x if k else y for k, x, y in zip(pick, a.choices, b.choices)),
            tuple(x if k else y for k, x, y in zip(pick, a.widths, b.widths)),
        )

    def _sample(self, make: Callable[[], SlimState], target_ms: float, low_ms: float = 0.0) -> SlimState | None:
        for _ in range(self.cfg.max_tries):
            s = make()
            if self._valid(s.choices) and s not in self.scores and low_ms <= self.latency(s) <= target_ms:
                return s
        return None

    def _evaluate(self, s: SlimState) -> None:
        self.scores[s] = self.evaluate(s)

    def best(self) -> tuple[SlimState, Score]:
        best = min(self.scores, key=lambda s: self.scores[s].loss)
        return best, self.scores[best]

    def random_search(self, target_ms: float, budget: int, low_fraction: float = 0.9) -> tuple[SlimState, Score]:
        """Plain random search: `budget` uniformly sampled states with latency in [low_fraction * target, target]
        (a window, so that the samples use the budget rather than being arbitrarily small), the best returned."""
        while len(self.scores) < budget:
            s = self._sample(self.random_state, target_ms, low_fraction * target_ms)
            if s is None:
                break
            self._evaluate(s)
        if not self.scores:
            raise RuntimeError(f"no random state in [{low_fraction:g}, 1] x {target_ms} ms")
        return self.best()

    def run(self, target_ms: float, budget: int) -> tuple[SlimState, Score]:
        """Evolve under `target_ms` with at most `budget` evaluations; (best state, its score)."""
        cfg = self.cfg
        population: list[SlimState] = []
        while len(population) < cfg.population and len(self.scores) < budget:
            s = self._sample(self.random_state, target_ms)
            if s is None:
                break
            self._evaluate(s)
            population.append(s)
        if not population:
            raise RuntimeError(f"no random state meets {target_ms} ms")
        n_parents = max(2, int(cfg.population * cfg.parent_ratio))
        while len(self.scores) < budget:
            parents = sorted(population, key=lambda s: self.scores[s].loss)[:n_parents]
            children = []
            for k in range(cfg.population - n_parents):
                if len(self.scores) >= budget:
                    break
                if k < (cfg.population - n_parents) * cfg.mutation_ratio:
                    child = self._sample(lambda p=parents: self.mutate(self.rng.choice(p)), target_ms)
                else:
                    child = self._sample(lambda p=parents: self.crossover(*self.rng.sample(p, 2)), target_ms)
                if child is not None:
                    self._evaluate(child)
                    children.append(child)
            if not children:
                break  # the neighbourhood is exhausted
            population = parents + children
        return self.best()
