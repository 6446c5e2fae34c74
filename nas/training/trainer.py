"""The training recipe shared by `nas.train_supernet` and `nas.train`.

Paper recipe for the weights: AdamW, cosine schedule with linear warm-up, lr = lr_base x batch / 1024 with
a 1e-5 floor, label smoothing; optionally timm's Mixup/CutMix and EMA, and DeiT-style hard distillation
through the distillation head. Checkpoints are written atomically every epoch and hold everything a
resumed run needs to continue bit-for-bit on CPU: weights, optimizers, scheduler, RNG states and the
epoch (the sampler is re-seeded per epoch, so its position is the epoch itself).

Subclasses hook in through `extra_*` / `on_epoch_start` (the supernet adds alpha, its optimizer and tau).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from nas.checkpoint import TRAIN_KIND, load_checkpoint, save_atomic
from nas.data import Splits
from supernet.devices import resolve_device
from supernet.errors import UserError
from supernet.files import atomic_write_text

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """Training cannot go on (a NaN/inf loss, a bad teacher, ...)."""


AMP = ("auto", "bf16", "off")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as oneDNN uses it; a CPU without either
    emulates bf16, which was not measured to help."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own cpuinfo probes
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`train.amp` on `device`: bf16 autocast, or None for fp32. `auto` is bf16 on CUDA (timm's --amp habit) and on a
    CPU with bf16 instructions (with channels-last, a hard supernet step took 0.54-0.59x the NCHW fp32 step on a 2-core
    AMD EPYC: benchmarks/README.md section 5), fp32 on any other CPU; `bf16` and `off` force either."""
    if amp not in AMP:
        raise TrainingError(f"train.amp={amp!r}; choose one of {', '.join(AMP)}")
    if amp == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    return torch.bfloat16 if amp == "bf16" else None


@dataclass
class DistillConfig:
    teacher: str | None = None  # a timm model name, e.g. regnety_160 (what the paper used on ImageNet)
    checkpoint: str | None = None  # local state_dict of the teacher (no hub downloads here)
    weight: float = 0.5  # DeiT hard distillation: (1-w) * CE(cls head, y) + w * CE(dist head, teacher argmax)


@dataclass
class TrainConfig:
    # The defaults are search_configs/train/tiny_cpu.yaml's, the commands' default recipe; train=paper is the
    # paper's (300 epochs, lr_base 1e-3, 5 warm-up epochs)
    epochs: int = 4
    batch_size: int = 128  # per process
    lr_base: float = 4e-3  # lr = lr_base x (global batch) / 1024, as the paper scales it (its lr_base: 1e-3)
    lr_min: float = 1e-5
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05  # DeiT's value; no decay on norms, biases and attention biases
    label_smoothing: float = 0.1
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    ema: bool = False  # timm ModelEmaV3; validation then uses the EMA weights
    ema_decay: float = 0.9998
    clip_grad: float = 0.0  # 0: no clipping
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    threads: int = 2  # torch intra-op threads; 0 keeps torch's default
    device: str = "auto"  # auto: this rank's CUDA device when there is one, else cpu; or cpu / cuda / cuda:N
    amp: str = "auto"  # bf16 autocast: auto (on CUDA and on CPUs with bf16 instructions, else fp32), bf16, off
    channels_last: bool = True  # NHWC model and inputs: oneDNN's and cuDNN's preferred layout for convolutions
    eval_batch_size: int = 256
    stop_after_epochs: int = 0  # >0: stop this invocation after N epochs (to interrupt a run; resume= continues)

    def lr(self, world_size: int = 1) -> float:
        return self.lr_base * self.batch_size * world_size / 1024


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that torchrun describes through the environment (gloo on CPU, nccl on GPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


@contextmanager
def distributed_session() -> Iterator[DistInfo]:
    """torchrun's process group for the duration of a command (none without torchrun), always left after."""
    dist_info = init_distributed()
    try:
        yield dist_info
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def checkpoint_to_resume(resume: str, ckpt_name: str) -> Path:
    """`resume=` names a run folder or its checkpoint file; the checkpoint file, which must exist."""
    from nas.checkpoint import CheckpointError

    r = Path(resume)
    ckpt = r if r.suffix == ".pt" else r / ckpt_name
    if not ckpt.is_file():
        raise CheckpointError(f"resume={resume}: no {ckpt_name} there to resume from")
    return ckpt


def _np_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _set_np_state(s: dict[str, Any]) -> None:
    np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}"))
    return out


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(-1) == target).float().mean().item()


class Trainer:
    """Train `model` on `splits.train`, validate on `splits.val`, checkpoint to `out_dir/ckpt_name`."""

    kind = TRAIN_KIND
    ckpt_name = "checkpoint.pt"
    frozen_sections = ("data", "init", "weights")  # config keys a resume must share with its checkpoint
    find_unused_parameters = False  # DDP: the supernet sets True (hard mode skips branches)

    def __init__(
        self,
        model: nn.Module,
        splits: Splits,
        cfg: TrainConfig,
        out_dir: Path,
        meta: dict[str, Any],
        dist_info: DistInfo | None = None,
    ):
        self.model, self.splits, self.cfg, self.out_dir = model, splits, cfg, Path(out_dir)
        self.meta = meta  # saved in the checkpoint as is: config, spec/space, input size, ...
        self.dist = dist_info or DistInfo()
        self.epoch = 0  # epochs completed
        self._rng_per_rank: list[dict[str, Any]] | None = None
        self.metrics: list[dict[str, float]] = []
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        self.device = resolve_device(cfg.device, "train.device", TrainingError)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.autocast = autocast_dtype(cfg.amp, self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        if self.dist.is_main:
            if cfg.amp == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
                log.warning("train.amp=bf16 on a CPU without bf16 instructions: torch emulates it, which may be slower")
            log.info(
                "training on %s in %s (train.amp=%s), %s",
                self.device,
                self.precision,
                cfg.amp,
                "channels-last" if cfg.channels_last else "NCHW",
            )
        self.train_loader = self._train_loader()
        self.val_loader = DataLoader(splits.val, batch_size=cfg.eval_batch_size, shuffle=False)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"train.batch_size={cfg.batch_size} is larger than the training split ({len(splits.train)} images)"
            )
        self.ddp_model = self._wrap_ddp(model)
        self.optimizer = self.build_optimizer()
        self.scheduler = self._build_scheduler()
        self.mixup = self._build_mixup()
        self.teacher = self._build_teacher()
        self.ema = self._build_ema()

    # ----------------------------------------------------------------------------------- building
    def _train_loader(self) -> DataLoader:
        if self.dist.world_size > 1:
            self.sampler = DistributedSampler(
                self.splits.train,
                self.dist.world_size,
                self.dist.rank,
                shuffle=True,
                seed=self.cfg.seed,
                drop_last=True,
            )
        else:
            self.sampler_gen = torch.Generator()
            self.sampler = RandomSampler(self.splits.train, generator=self.sampler_gen)
        return DataLoader(self.splits.train, batch_size=self.cfg.batch_size, sampler=self.sampler, drop_last=True)

    def _set_epoch_sampler(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        else:
            self.sampler_gen.manual_seed(self.cfg.seed * 100003 + epoch)

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size <= 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.find_unused_parameters
        )

    def weight_params(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.model.named_parameters())

    def build_optimizer(self) -> torch.optim.Optimizer:
        skip = set(getattr(self.model, "no_weight_decay", lambda: set())())
        decay, no_decay = [], []
        for name, p in self.weight_params():
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr(self.dist.world_size))

    def _build_scheduler(self):
        from timm.scheduler import CosineLRScheduler

        steps = self.steps_per_epoch
        return CosineLRScheduler(
            self.optimizer,
            t_initial=max(1, self.cfg.epochs * steps),
            lr_min=self.cfg.lr_min,
            warmup_t=int(self.cfg.warmup_epochs * steps),
            warmup_lr_init=self.cfg.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )

    def _build_mixup(self):
        if self.cfg.mixup <= 0 and self.cfg.cutmix <= 0:
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=self.cfg.mixup,
            cutmix_alpha=self.cfg.cutmix,
            label_smoothing=self.cfg.label_smoothing,
            num_classes=self.splits.num_classes,
        )

    def _build_teacher(self) -> nn.Module | None:
        d = self.cfg.distill
        if not d.teacher:
            return None
        import timm

        if not d.checkpoint:
            raise TrainingError("train.distill.checkpoint is required with a teacher (no model hub is reachable)")
        try:
            teacher = timm.create_model(d.teacher, pretrained=False, num_classes=self.splits.num_classes)
        except RuntimeError as e:
            raise TrainingError(f"train.distill.teacher={d.teacher!r}: {e}") from None
        path = Path(d.checkpoint)
        if not path.is_file():
            raise TrainingError(f"teacher checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            teacher.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except Exception as e:
            raise TrainingError(f"teacher checkpoint {path} does not load into {d.teacher}: {str(e)[:160]}") from None
        self.model.set_distilled_training(True)
        return teacher.to(self.device).eval().requires_grad_(False)

    def _build_ema(self):
        if not self.cfg.ema:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.model, decay=self.cfg.ema_decay)

    # ------------------------------------------------------------------------------------- hooks
    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch (the supernet sets tau here)."""

    def after_backward(self, epoch: int) -> None:
        """Called after each backward pass, before the weight step (the supernet steps alpha here)."""

    def extra_metrics(self) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def on_finish(self) -> None:
        pass

    # ---------------------------------------------------------------------------------- training
    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    @property
    def precision(self) -> str:
        """What `train.amp` resolved to on this device: "bf16" or "fp32"."""
        return "bf16" if self.autocast is not None else "fp32"

    def autocast_context(self, enabled: bool = True):
        """torch's autocast in `train.amp`'s dtype (a no-op when it is off); the loss itself runs in fp32."""
        enabled = enabled and self.autocast is not None
        return torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=enabled)

    def loss(self, x: torch.Tensor, y: torch.Tensor, **forward: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits for train accuracy). `forward`: keyword arguments of the model's forward."""
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        out = self.ddp_model(x, **forward)
        if self.teacher is not None:
            cls, dist_logits = out
            with torch.no_grad():
                teacher_labels = self.teacher(x).argmax(-1)
            w = self.cfg.distill.weight
            loss = (1 - w) * self._ce(cls, target) + w * F.cross_entropy(dist_logits, teacher_labels)
            return loss, (cls + dist_logits) / 2
        return self._ce(out, target), out

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2:  # soft targets from Mixup (label smoothing already applied)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        self._set_epoch_sampler(epoch)
        tot_loss, tot_acc, n = 0.0, 0.0, 0
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not self.dist.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        for step, (x, y) in enumerate(bar):
            x, y = self.to_device(x, y)
            with self.autocast_context():
                loss, logits = self.loss(x, y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped. The last good "
                    f"checkpoint is kept at {self.out_dir / self.ckpt_name} (try a lower train.lr_base)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.after_backward(epoch)
            if self.cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_([p for _, p in self.weight_params()], self.cfg.clip_grad)
            self.optimizer.step()
            self.scheduler.step_update(epoch * self.steps_per_epoch + step + 1)
            if self.ema is not None:
                self.ema.update(self.model)
            acc = accuracy(logits.detach(), y)
            tot_loss, tot_acc, n = tot_loss + loss.item(), tot_acc + acc, n + 1
            bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{tot_acc / n:.3f}")
        return {"train_loss": tot_loss / max(n, 1), "train_acc": tot_acc / max(n, 1)}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, model: nn.Module | None = None, fp32: bool = False) -> float:
        """Top-1 over `loader`, under `train.amp`'s autocast unless `fp32` (the precision a model is exported in)."""
        model = model or (self.ema.module if self.ema is not None else self.model)
        was_training = model.training
        model.eval()
        correct, total = 0, 0
        for x, y in loader:
            x, y = self.to_device(x, y)
            with self.autocast_context(enabled=not fp32):
                correct += (model(x).argmax(-1) == y).sum().item()
            total += len(y)
        model.train(was_training)
        return correct / max(total, 1)

    def fit(self) -> list[dict[str, float]]:
        start = self.epoch
        end = self.cfg.epochs
        if self.cfg.stop_after_epochs > 0:
            end = min(end, start + self.cfg.stop_after_epochs)
        for epoch in range(start, end):
            self.on_epoch_start(epoch)
            row = {"epoch": epoch + 1, **self.train_one_epoch(epoch)}
            row["val_acc"] = self.evaluate(self.val_loader)
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row.update(self.extra_metrics())
            self.metrics.append(row)
            self.epoch = epoch + 1
            self.gather_rng()
            if self.dist.is_main:
                log.info(
                    "epoch %d/%d  %s",
                    epoch + 1,
                    self.cfg.epochs,
                    "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
                )
                self.save()
        if self.epoch >= self.cfg.epochs:
            self.on_finish()
        return self.metrics

    # ------------------------------------------------------------------------------ checkpointing
    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format_version": 1,
            "meta": self.meta,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": self._rng_per_rank or [self._rng_state()],  # one entry per DDP rank
            "metrics": self.metrics,
            **self.extra_state(),
        }

    @staticmethod
    def _rng_state() -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": _np_state()}

    def gather_rng(self) -> None:
        """Collect every rank's RNG state (a collective: all ranks call it) for the next checkpoint."""
        if self.dist.world_size > 1:
            states: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(states, self._rng_state())
            self._rng_per_rank = states

    def save(self) -> None:
        save_atomic(self.state(), self.out_dir / self.ckpt_name)
        self.write_metrics_csv()

    def write_metrics_csv(self) -> None:
        if not self.metrics:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.metrics[-1]))
        writer.writeheader()
        writer.writerows(self.metrics)
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())

    def resume(self, path: Path, ckpt: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint at `path` (pass `ckpt` when it is already loaded)."""
        ckpt = load_checkpoint(path, self.kind) if ckpt is None else ckpt
        self.check_settings(ckpt, path)
        self.check_compatible(ckpt, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        rng = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # older checkpoints: one state
        if len(rng) > 1 and len(rng) != self.dist.world_size:
            raise TrainingError(
                f"resume: {path} holds the RNG states of {len(rng)} ranks, this run has "
                f"{self.dist.world_size}; resume with the same number of processes"
            )
        own = rng[self.dist.rank] if len(rng) > 1 else rng[0]  # each DDP rank restores its own RNG state
        torch.set_rng_state(own["torch"])
        _set_np_state(own["numpy"])
        self.epoch, self.metrics = int(ckpt["epoch"]), list(ckpt["metrics"])
        # The learning-rate schedule is rebuilt from this run's config, not restored (timm's scheduler state
        # carries the old length): extending train.epochs continues the cosine over the new length, and a plain
        # resume gets exactly the values it would have had.
        self.scheduler.step_update(self.epoch * self.steps_per_epoch)
        self.load_extra_state(ckpt)
        log.info("resumed from %s after epoch %d", path, self.epoch)

    def check_settings(self, ckpt: dict[str, Any], path: Path) -> None:
        """A resume continues the same run: refuse one whose `frozen_sections` of the config differ from the
        checkpoint's, naming the first differing key. (The train recipe may change: train.epochs extends a run.)"""
        theirs = ckpt.get("meta", {}).get("config", {})
        ours = self.meta.get("config", {})
        for section in self.frozen_sections:
            a, b = _flatten(theirs.get(section), section), _flatten(ours.get(section), section)
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    raise TrainingError(
                        f"resume: {path} was trained with {key}={a.get(key)!r}, this run has {key}={b.get(key)!r}; "
                        f"a resume continues the same run (only the train recipe, e.g. train.epochs, may change)"
                    )

    def check_compatible(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint whose model shapes differ (subclasses add clearer, domain-specific checks)."""
        own = self.model.state_dict()
        theirs = ckpt.get("model", {})
        bad = [k for k in own if k not in theirs or tuple(theirs[k].shape) != tuple(own[k].shape)]
        if bad or len(theirs) != len(own):
            raise TrainingError(f"{path} holds a different model ({len(bad)} mismatched tensors, e.g. {bad[:1]})")
