"""`python -m nas.train_supernet`: train the supernet's weights and its architecture importance alpha, once.

    python -m nas.train_supernet                                   # space=tiny on Fashion-MNIST (CPU, ~10 min)
    python -m nas.train_supernet space=tiny data=digits train.epochs=2 out=runs/sn
    python -m nas.train_supernet resume=runs/sn train.epochs=4     # continue a run
    torchrun --nproc_per_node=2 -m nas.train_supernet ...          # DistributedDataParallel (gloo on CPU)

The run folder holds supernet.pt (weights, alpha, space, config, input size, and full resume state),
metrics.csv (per epoch: loss, train/val accuracy, tau, alpha entropy, stage scores), importance.png,
alpha.yaml (softmax(alpha), MetaPath and stage importance, the derived path) and config.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from nas.arch import atomic_write_text
from nas.checkpoint import SUPERNET_KIND, CheckpointError, load_checkpoint
from nas.config import to_yaml
from nas.data import DataConfig, build_datasets
from nas.errors import run_cli
from nas.trainer import DistInfo, TrainConfig, Trainer, checkpoint_to_resume, distributed_main
from supernet.space import SpaceConfig
from supernet.supernet import NOISE, SuperNet

log = logging.getLogger(__name__)


@dataclass
class SupernetConfig:
    noise: str = "gumbel"  # gumbel: -log(-log U) (DARTS/FBNet); uniform: the paper's literal eps ~ U(0,1); none
    hard: bool = False  # straight-through Gumbel (our addition): run only the sampled branch per MetaPath
    tau_start: float = 5.0  # FBNet's starting temperature
    tau_end: float = 0.5  # geometric decay from tau_start to tau_end over the run ...
    tau_decay: float = 0.0  # ... unless > 0: a fixed per-epoch factor instead (FBNet: 0.956)
    alpha_lr: float = 3e-3  # Adam, no weight decay, its own parameter group
    alpha_beta1: float = 0.5  # DARTS' Adam betas for alpha: (0.5, 0.999)
    alpha_start_epoch: int = 0  # alpha stays frozen for this many epochs while the weights warm up (FBNet)

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


@dataclass
class TrainSupernetConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    out: str | None = None  # run folder; default runs/supernet/<timestamp>
    resume: str | None = None  # a run folder (or its supernet.pt) to continue


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


def resolve_run_dir(cfg: TrainSupernetConfig) -> tuple[Path, Path | None]:
    """(output folder, checkpoint to resume from or None)."""
    if cfg.resume:
        ckpt = checkpoint_to_resume(cfg.resume, SupernetTrainer.ckpt_name)
        return ckpt.parent, ckpt
    if cfg.out:
        return Path(cfg.out), None
    return Path("runs/supernet") / time.strftime("%Y%m%d-%H%M%S"), None


def run(cfg: TrainSupernetConfig, dist_info: DistInfo | None = None) -> Path:
    """Train (or resume) a supernet; returns the run folder."""
    dist_info = dist_info or DistInfo()
    if cfg.supernet.noise not in NOISE:
        from nas.config import ConfigError

        raise ConfigError(f"supernet.noise={cfg.supernet.noise!r}; choose one of {', '.join(NOISE)}")
    out_dir, resume_path = resolve_run_dir(cfg)
    resume_ckpt = None
    if resume_path is not None:  # fail on a bad checkpoint before any data is loaded
        resume_ckpt = load_checkpoint(resume_path, SUPERNET_KIND)
        check_space(resume_ckpt, dataclasses.asdict(cfg.space), resume_path)
    cfg.data.input_size = cfg.space.input_size  # the space's input size wins
    splits = build_datasets(cfg.data)
    torch.manual_seed(cfg.train.seed)  # identical initial weights and alpha on every rank and every run
    model = SuperNet(
        cfg.space,
        splits.num_classes,
        splits.in_chans,
        noise=cfg.supernet.noise,
        hard=cfg.supernet.hard,
        tau=cfg.supernet.tau_start,
    )
    meta = {
        "space": dataclasses.asdict(cfg.space),
        "config": dataclasses.asdict(cfg),
        "input_size": cfg.space.input_size,
        "num_classes": splits.num_classes,
        "in_chans": splits.in_chans,
    }
    trainer = SupernetTrainer(model, cfg.supernet, splits, cfg.train, out_dir, meta, dist_info)
    if resume_path is not None:
        trainer.resume(resume_path, resume_ckpt)
    if dist_info.is_main:
        atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
        log.info("run folder: %s", out_dir)
    t0 = time.time()
    metrics = trainer.fit()
    if dist_info.is_main and metrics:
        spec = model.spec_of(model.derive())
        log.info(
            "done in %.1f min: val_acc=%.4f, derived depths %s, MB3D %s -> %s",
            (time.time() - t0) / 60,
            metrics[-1]["val_acc"],
            spec.depths,
            spec.num_3d,
            out_dir / trainer.ckpt_name,
        )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    distributed_main("train_supernet", TrainSupernetConfig, run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    run_cli(main)
