"""Training a found (or preset) EfficientViT and evaluating it on the test split: `train_model(cfg)`, which
`python -m nas.train` runs. From scratch (the paper's protocol) or from the weights nas.slim sliced out of the
supernet (`init=inherited`, our addition). The recipe is nas.training.trainer's, shared with supernet training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from latency_lut.table import LatencyTable, LUTError
from nas.checkpoint import TRAIN_KIND, WEIGHTS_KIND, CheckpointError, load_checkpoint, load_model_weights
from nas.config import to_yaml
from nas.data import DataConfig, build_datasets
from nas.training.trainer import DistInfo, TrainConfig, Trainer, checkpoint_to_resume
from supernet.arch import PRESETS, ArchSpec, SpecError, arch_meta, resolve_arch
from supernet.errors import ConfigError
from supernet.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class TrainModelConfig:
    arch: str = "???"  # a preset (l1, l3, l7) or an arch.yaml emitted by nas.slim
    init: str = "scratch"  # scratch | inherited (fine-tune weights.pt from nas.slim; our addition)
    weights: str | None = None  # init=inherited: default is weights.pt beside the arch YAML
    lut: str | None = None  # LUT for metrics.json's predicted latency; default: the one recorded in arch.yaml
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str | None = None  # run folder; default runs/train/<timestamp>
    resume: str | None = None  # a run folder (or its checkpoint.pt) to continue


def resolve_spec(cfg: TrainModelConfig, num_classes: int) -> ArchSpec:
    """The arch to train. A preset adopts the data's input size and class count; an arch YAML keeps its own
    input size (the data follows it) and must match the data's classes."""
    spec = resolve_arch(cfg.arch)
    if cfg.arch in PRESETS:
        return spec.replace(input_size=cfg.data.input_size, num_classes=num_classes).validate()
    if spec.num_classes != num_classes:
        raise SpecError(f"{cfg.arch} has {spec.num_classes} classes but data {cfg.data.name} has {num_classes}")
    return spec


def inherited_state(cfg: TrainModelConfig, spec: ArchSpec) -> dict[str, torch.Tensor]:
    if cfg.arch in PRESETS and not cfg.weights:
        raise ConfigError("init=inherited needs weights=PATH for a preset (nas.slim writes weights.pt for its archs)")
    path = Path(cfg.weights) if cfg.weights else Path(cfg.arch).parent / "weights.pt"
    return load_model_weights(path, spec, kinds=(WEIGHTS_KIND,))[1]


def predicted_latency(cfg: TrainModelConfig, spec: ArchSpec) -> tuple[float | None, str | None]:
    lut = cfg.lut or arch_meta(cfg.arch).get("lut", {}).get("path")
    if not lut:
        return None, None
    try:
        return LatencyTable.load(lut).predict(spec), str(lut)
    except LUTError as e:
        log.warning("no LUT-predicted latency: %s", e)
        return None, str(lut)


def train_model(cfg: TrainModelConfig, dist_info: DistInfo | None = None) -> Path:
    from supernet import build_model
    from supernet.complexity import count_macs, count_params

    dist_info = dist_info or DistInfo()
    if cfg.init not in ("scratch", "inherited"):
        raise ConfigError(f"init={cfg.init!r}; choose scratch or inherited")
    if cfg.arch not in PRESETS:
        cfg.data.input_size = resolve_arch(cfg.arch).input_size  # the searched input size wins
    resume_path = None
    if cfg.resume:
        resume_path = checkpoint_to_resume(cfg.resume, Trainer.ckpt_name)
        resume_ckpt = load_checkpoint(resume_path, TRAIN_KIND)  # fail early, before loading data
        out_dir = resume_path.parent
    else:
        resume_ckpt = None
        out_dir = Path(cfg.out) if cfg.out else Path("runs/train") / time.strftime("%Y%m%d-%H%M%S")
    splits = build_datasets(cfg.data)
    spec = resolve_spec(cfg, splits.num_classes)
    torch.manual_seed(cfg.train.seed)
    model = build_model(spec)
    if cfg.init == "inherited" and resume_ckpt is None:
        model.load_state_dict(inherited_state(cfg, spec))
    meta = {"spec": spec.to_dict(), "config": dataclasses.asdict(cfg), "input_size": spec.input_size}
    if resume_ckpt is not None and resume_ckpt["meta"].get("spec") != meta["spec"]:
        raise CheckpointError(f"{resume_path} trained another architecture than {cfg.arch}")
    trainer = Trainer(model, splits, cfg.train, out_dir, meta, dist_info)
    if resume_ckpt is not None:
        trainer.resume(resume_path, resume_ckpt)
    if dist_info.is_main:
        atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
        spec.save(out_dir / "arch.yaml")
        log.info("run folder: %s (%s, init=%s)", out_dir, cfg.arch, cfg.init)
    t0 = time.time()
    metrics = trainer.fit()
    if not dist_info.is_main or trainer.epoch < cfg.train.epochs:
        return out_dir
    final = trainer.ema.module if trainer.ema is not None else model
    test_loader = DataLoader(splits.test, batch_size=cfg.train.eval_batch_size)
    pred_ms, lut = predicted_latency(cfg, spec)
    report = {
        "arch": cfg.arch,
        "init": cfg.init,
        "test_top1": trainer.evaluate(test_loader, final, fp32=True),  # as exported, whatever it trained in
        "precision": trainer.precision,
        "val_top1": metrics[-1]["val_acc"] if metrics else None,
        "params_M": count_params(model) / 1e6,
        "MACs_M": sum(count_macs(model, spec.input_size, spec.in_chans).values()) / 1e6,
        "predicted_ms": pred_ms,
        "lut": lut,
        "epochs": trainer.epoch,
        "train_wall_s": round(time.time() - t0, 1),
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2))
    from nas.plots import plot_training

    plot_training(trainer.metrics, out_dir / "curves.png")
    log.info(
        "test top-1 %.4f  (%s, %.2fM params, %.1fM MACs, predicted %s ms) -> %s",
        report["test_top1"],
        cfg.arch,
        report["params_M"],
        report["MACs_M"],
        f"{pred_ms:.3f}" if pred_ms else "n/a",
        out_dir / "metrics.json",
    )
    return out_dir
