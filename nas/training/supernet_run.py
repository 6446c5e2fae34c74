"""Training the supernet once: its weights and its architecture importance alpha (`train_supernet(cfg)`, which
`python -m nas.train_supernet` runs, single-process or under torchrun). The run folder holds supernet.pt,
metrics.csv, importance.png, alpha.yaml and config.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nas.checkpoint import SUPERNET_KIND, load_checkpoint
from nas.config import to_yaml
from nas.data import DataConfig, build_datasets
from nas.training.supernet_trainer import SupernetConfig, SupernetTrainer, check_space
from nas.training.trainer import DistInfo, TrainConfig, checkpoint_to_resume
from supernet.errors import ConfigError
from supernet.files import atomic_write_text
from supernet.space import SpaceConfig
from supernet.supernet import NOISE, SuperNet

log = logging.getLogger(__name__)


@dataclass
class TrainSupernetConfig:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    out: str | None = None  # run folder; default runs/supernet/<timestamp>
    resume: str | None = None  # a run folder (or its supernet.pt) to continue


def resolve_run_dir(cfg: TrainSupernetConfig) -> tuple[Path, Path | None]:
    """(output folder, checkpoint to resume from or None)."""
    if cfg.resume:
        ckpt = checkpoint_to_resume(cfg.resume, SupernetTrainer.ckpt_name)
        return ckpt.parent, ckpt
    if cfg.out:
        return Path(cfg.out), None
    return Path("runs/supernet") / time.strftime("%Y%m%d-%H%M%S"), None


def train_supernet(cfg: TrainSupernetConfig, dist_info: DistInfo | None = None) -> Path:
    """Train (or resume) a supernet; returns the run folder."""
    dist_info = dist_info or DistInfo()
    if cfg.supernet.noise not in NOISE:
        raise ConfigError(f"supernet.noise={cfg.supernet.noise!r}; choose one of {', '.join(NOISE)}")
    if cfg.supernet.width_sampling and dist_info.world_size > 1:
        raise ConfigError(
            "supernet.width_sampling=true runs two forward passes per step, which DistributedDataParallel does not "
            "allow: train it in one process"
        )
    if cfg.supernet.width_sampling and cfg.supernet.width_step <= 0:
        raise ConfigError(f"supernet.width_step={cfg.supernet.width_step}: a positive number of channels")
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
        channel_order="prefix" if cfg.supernet.width_sampling else "importance",
    )
    meta = {
        "channel_order": model.channel_order,  # how nas.slim extracts a narrower stage from these weights
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
