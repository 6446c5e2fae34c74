"""Training the supernet: its weights with the shared `Trainer` recipe, and its architecture importance alpha with
an Adam of its own, under an annealed Gumbel-softmax temperature."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from nas.checkpoint import SUPERNET_KIND, CheckpointError
from nas.training.trainer import Trainer
from supernet.files import atomic_write_text
from supernet.supernet import SuperNet

log = logging.getLogger(__name__)


@dataclass
class SupernetConfig:
    noise: str = "gumbel"  # gumbel: -log(-log U) (DARTS/FBNet); uniform: the paper's literal eps ~ U(0,1); none
    hard: bool = True  # straight-through Gumbel (our addition): only the sampled branch per MetaPath runs; False: soft
    tau_start: float = 5.0  # FBNet's starting temperature
    tau_end: float = 0.5  # geometric decay from tau_start to tau_end over the run ...
    tau_decay: float = 0.0  # ... unless > 0: a fixed per-epoch factor instead (FBNet: 0.956)
    alpha_lr: float = 3e-3  # Adam, no weight decay, its own parameter group
    alpha_beta1: float = 0.5  # DARTS' Adam betas for alpha: (0.5, 0.999)
    alpha_start_epoch: int = 0  # alpha stays frozen for this many epochs while the weights warm up (FBNet)
    width_sampling: bool = False  # each step also trains the network narrowed to widths drawn per stage from the
    # slimmer's grid (multiples of width_step), on the first channels of the full weights: the "sandwich rule" of
    # once-for-all training without its smallest network. Two forward passes per step. The search then scores a
    # narrower stage as trained, extracting it by prefix (SuperNet channel_order="prefix"); one process only
    width_step: int = 16  # the grid of width_sampling; nas.slim's width_step

    def tau(self, epoch: int, epochs: int, anchor: tuple[int, float] | None = None) -> float:
        """tau for 0-based `epoch` of `epochs`. `anchor` = (epochs completed, tau of the last of them) when a run
        is resumed: tau then anneals geometrically from that value to tau_end over the remaining epochs, so
        extending train.epochs keeps tau continuous, and a plain resume reproduces the original schedule."""
        if self.tau_decay > 0:
            return max(self.tau_end, self.tau_start * self.tau_decay**epoch)
        if anchor is not None and anchor[0] > 0:
            done, last = anchor
            return last * (self.tau_end / last) ** ((epoch - done + 1) / max(epochs - done, 1))
        frac = epoch / max(epochs - 1, 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac


class SupernetTrainer(Trainer):
    kind = SUPERNET_KIND
    ckpt_name = "supernet.pt"
    find_unused_parameters = True  # hard mode runs one branch per MetaPath: the others get no gradient
    frozen_sections = ("data", "space", "supernet")  # a resume may change train.* (e.g. epochs), not these

    def __init__(self, model: SuperNet, sn_cfg: SupernetConfig, *args: Any, **kwargs: Any):
        self.sn_cfg = sn_cfg
        self._tau_anchor: tuple[int, float] | None = None
        super().__init__(model, *args, **kwargs)
        self.alpha_optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=sn_cfg.alpha_lr, betas=(sn_cfg.alpha_beta1, 0.999), weight_decay=0.0
        )

    def weight_params(self):
        return self.model.weight_parameters()

    def loss(self, x: torch.Tensor, y: torch.Tensor, **forward: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The full network's loss; with `width_sampling`, plus the loss of the network narrowed to widths drawn
        for this step (accuracy is reported on the full network)."""
        loss, logits = super().loss(x, y, **forward)
        if self.sn_cfg.width_sampling:
            narrow, _ = super().loss(x, y, widths=self.model.sample_widths(self.sn_cfg.width_step))
            loss = loss + narrow
        return loss, logits

    def on_epoch_start(self, epoch: int) -> None:
        self.model.tau = self.sn_cfg.tau(epoch, self.cfg.epochs, self._tau_anchor)

    def after_backward(self, epoch: int) -> None:
        if epoch >= self.sn_cfg.alpha_start_epoch:
            self.alpha_optimizer.step()
        self.alpha_optimizer.zero_grad(set_to_none=True)

    def extra_metrics(self) -> dict[str, float]:
        _, stage_scores = self.model.importance()
        return {
            "tau": self.model.tau,
            "alpha_entropy": self.model.alpha_entropy(),
            **{f"score_stage{i + 1}": s for i, s in enumerate(stage_scores)},
        }

    def extra_state(self) -> dict[str, Any]:
        return {"alpha_optimizer": self.alpha_optimizer.state_dict(), "tau": self.model.tau}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.model.tau = float(state["tau"])
        self._tau_anchor = (int(state["epoch"]), self.model.tau)

    def check_compatible(self, ckpt: dict[str, Any], path: Path) -> None:
        check_space(ckpt, self.meta["space"], path)
        super().check_compatible(ckpt, path)

    def save(self) -> None:
        super().save()
        from nas.plots import plot_importance

        plot_importance(self.metrics, self.out_dir / "importance.png")
        atomic_write_text(self.out_dir / "alpha.yaml", alpha_report(self.model))

    def on_finish(self) -> None:
        if self.dist.world_size > 1:  # alpha must be identical on every rank: check rather than assume
            flat = torch.cat([a.detach().flatten() for a in self.model.alphas])
            gathered = [torch.zeros_like(flat) for _ in range(self.dist.world_size)]
            dist.all_gather(gathered, flat)
            diff = max((g - flat).abs().max().item() for g in gathered)
            log.info("alpha max abs difference across %d ranks: %.3g", self.dist.world_size, diff)
            if diff > 0:
                raise RuntimeError(f"alpha diverged across ranks (max abs diff {diff})")


def alpha_report(model: SuperNet) -> str:
    """softmax(alpha), per-MetaPath and per-stage importance, and the derived path, as YAML."""
    paths, stages = model.importance()
    return yaml.safe_dump(
        {
            "choices": [list(c) for c in model.stage_choices],
            "probabilities": [[[round(v, 6) for v in row] for row in p.tolist()] for p in model.probabilities()],
            "metapath_importance": [[round(v, 4) for v in s] for s in paths],
            "stage_importance": [round(v, 4) for v in stages],
            "derived": [list(c) for c in model.derive()],
            "tau": model.tau,
        },
        sort_keys=False,
    )


def check_space(ckpt: dict[str, Any], space: dict[str, Any], path: Path) -> None:
    """Refuse a supernet checkpoint trained on another search space, naming both."""
    theirs = ckpt.get("meta", {}).get("space")
    if theirs != space:
        t = theirs if isinstance(theirs, dict) else {}
        raise CheckpointError(
            f"{path} was trained on space {t.get('name')!r} (depths {t.get('depths')}, widths {t.get('widths')}), "
            f"not on space {space['name']!r} (depths {space['depths']}, widths {space['widths']})"
        )
