"""What a search walks: a `SlimState` (MetaPath choices plus stage widths) and the `Step`s of a trajectory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from supernet.arch import StageSpec, describe_stages
from supernet.errors import UserError
from supernet.space import Choices, stages_of


class UnreachableTarget(UserError):
    """The requested latency cannot be reached."""


@dataclass(frozen=True)
class SlimState:
    """A path through the supernet: per stage, per MetaPath "4d" / "3d" / "id", and each stage's width."""

    choices: Choices
    widths: tuple[int, ...]

    @property
    def stages(self) -> tuple[StageSpec, ...]:
        return stages_of(self.choices, self.widths)

    @property
    def num_blocks(self) -> int:
        return sum(s.depth for s in self.stages)

    def describe(self) -> str:
        return describe_stages(self.stages)


@dataclass(frozen=True)
class Step:
    step: int
    action: str
    where: str
    latency_ms: float
    val_loss: float  # mean cross-entropy on the scoring images: what the search minimises
    val_acc: float  # top-1 on the same images, reported
    score: float  # loss increase (nats) per ms saved (0 when the loss did not rise); nan where not a slimming step
    state: SlimState
    evaluations: int  # accuracy evaluations so far


def first_at_or_below(traj: list[Step], target_ms: float) -> Step:
    """The first state of the trajectory whose predicted latency is at or below the target."""
    for s in traj:
        if s.latency_ms <= target_ms:
            return s
    raise UnreachableTarget(f"no state of the trajectory reaches {target_ms:g} ms")


def slim_further(traj: list[Step], extend: Callable[[list[Step]], object]) -> bool:
    """Slim the trajectory one step further with `extend` (e.g. `Slimmer.extend`, which appends the step);
    whether it grew (False where no action lowers the latency any more)."""
    n = len(traj)
    try:
        extend(traj)
    except UnreachableTarget:
        return False
    return len(traj) > n
