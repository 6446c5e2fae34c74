"""nas.train_supernet end to end on small real configs (digits, a small space at 32 px)."""

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nas.checkpoint import SUPERNET_KIND, CheckpointError, load_checkpoint
from nas.config import ConfigError, compose
from nas.train_supernet import TrainSupernetConfig, run
from nas.training.trainer import TrainingError
from tests.helpers import SMALL_TRAINING, torchrun

ROOT = Path(__file__).resolve().parent.parent
SMALL = SMALL_TRAINING


def small_cfg(tmp: Path, *extra: str) -> TrainSupernetConfig:
    return compose("train_supernet", [*SMALL, f"out={tmp}", *extra], TrainSupernetConfig)


def test_default_config_composes_to_tiny_fashion_mnist():
    cfg = compose("train_supernet", [], TrainSupernetConfig)
    assert (cfg.space.name, cfg.data.name, cfg.space.input_size) == ("tiny", "fashion_mnist", 64)
    assert cfg.supernet.noise == "gumbel" and cfg.train.epochs >= 1
    l7 = compose("train_supernet", ["space=l7", "train=paper"], TrainSupernetConfig)
    assert l7.space.depths == [6, 6, 18, 8] and l7.space.widths == [96, 192, 384, 768] and l7.space.input_size == 224
    assert (l7.train.epochs, l7.train.warmup_epochs, l7.train.lr_base, l7.train.lr_min) == (300, 5, 1e-3, 1e-5)


@pytest.mark.parametrize("override", ["train.epochz=3", "space=huge", "train.epochs=three", "supernet.hard=maybe"])
def test_bad_overrides_fail_loudly(override):
    with pytest.raises(ConfigError):
        compose("train_supernet", [override], TrainSupernetConfig)


def test_run_writes_outputs(tmp_path):
    out = run(small_cfg(tmp_path, "train.epochs=2"))
    ckpt = load_checkpoint(out / "supernet.pt", SUPERNET_KIND)
    assert ckpt["meta"]["space"]["depths"] == [1, 1, 2, 2] and ckpt["meta"]["input_size"] == 32
    assert ckpt["meta"]["config"]["data"]["name"] == "digits"
    assert {"alphas.0", "alphas.3"} <= set(ckpt["model"])
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["epoch"]) == [1, 2]
    for col in ["train_loss", "train_acc", "val_acc", "tau", "alpha_entropy", "score_stage1", "score_stage4"]:
        assert m[col].notna().all(), col
    assert m["tau"].iloc[0] > m["tau"].iloc[1]  # annealed
    assert (out / "importance.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    alpha = yaml.safe_load((out / "alpha.yaml").read_text())
    assert len(alpha["metapath_importance"]) == 4 and len(alpha["metapath_importance"][2]) == 2
    # log-space importance: a stage's is the log of the sum of its MetaPaths' odds
    stage4 = math.log(sum(math.exp(v) for v in alpha["metapath_importance"][3]))
    assert alpha["stage_importance"][3] == pytest.approx(stage4, rel=1e-3, abs=1e-3)
    assert m["val_acc"].iloc[-1] > 0.2  # above chance (0.1) after two short epochs


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_resume_equals_uninterrupted(tmp_path):
    full = run(small_cfg(tmp_path / "full", "train.epochs=3"))
    part = run(small_cfg(tmp_path / "part", "train.epochs=3", "train.stop_after_epochs=1"))
    assert load_checkpoint(part / "supernet.pt", SUPERNET_KIND)["epoch"] == 1
    resumed = run(small_cfg(tmp_path / "ignored", "train.epochs=3", f"resume={part}"))
    assert resumed == part
    a = load_checkpoint(full / "supernet.pt", SUPERNET_KIND)
    b = load_checkpoint(part / "supernet.pt", SUPERNET_KIND)
    assert b["epoch"] == 3
    alphas = {k: v for k, v in a["model"].items() if k.startswith("alphas")}
    assert _max_diff(alphas, b["model"]) <= 1e-6
    assert _max_diff(a["model"], b["model"]) <= 1e-6
    assert a["metrics"][-1]["val_acc"] == b["metrics"][-1]["val_acc"]


def test_resume_from_other_space_or_corrupt_file_is_one_clear_line(tmp_path):
    out = run(small_cfg(tmp_path / "a", "train.epochs=1"))
    theirs, ours = r"widths \[16, 16, 32, 32\]", r"widths \[16, 16, 32, 48\]"  # both spaces named, each by its widths
    with pytest.raises(
        CheckpointError, match=rf"was trained on space 'tiny' \(.*{theirs}\), not on space 'tiny' \(.*{ours}\)$"
    ):
        run(small_cfg(tmp_path / "b", "train.epochs=2", "space.widths=[16,16,32,48]", f"resume={out}"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "supernet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(small_cfg(tmp_path / "c", f"resume={bad}"))
    with pytest.raises(CheckpointError, match="no supernet.pt"):
        run(small_cfg(tmp_path / "c", f"resume={tmp_path / 'nowhere'}"))
    r = subprocess.run(
        [sys.executable, "-m", "nas.train_supernet", *SMALL, f"resume={bad}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read checkpoint") and r.stderr.count("\n") == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from nas.training.supernet_trainer import SupernetTrainer

    original = SupernetTrainer.loss

    def poisoned(self, x, y):
        loss, logits = original(self, x, y)
        return (loss * float("nan"), logits) if self.epoch >= 1 else (loss, logits)

    monkeypatch.setattr(SupernetTrainer, "loss", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2"):
        run(small_cfg(tmp_path, "train.epochs=3"))
    ckpt = load_checkpoint(tmp_path / "supernet.pt", SUPERNET_KIND)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_width_sampling_trains_the_full_and_a_drawn_narrower_network_every_step(tmp_path, monkeypatch):
    """Every training step runs the full network and one network narrowed to widths drawn from the grid (the
    narrowed forward itself is checked against independent builds in test_supernet.py); the loss is their sum,
    so it starts near 2 ln 10; the checkpoint records the prefix channel order that nas.slim extracts by."""
    from nas.search.loading import load_supernet
    from supernet.supernet import SuperNet

    calls: list = []
    forward = SuperNet.forward

    def spy(self, x, weights=None, widths=None):
        if self.training and tuple(self.spec.widths) == (16, 16, 32, 32):  # not the narrower template it calls
            calls.append(widths)
        return forward(self, x, weights, widths)

    monkeypatch.setattr(SuperNet, "forward", spy)
    out = run(small_cfg(tmp_path, "train.epochs=1", "supernet.width_sampling=true"))
    steps = len(calls) // 2
    assert steps > 5 and calls[0::2] == [None] * steps  # the full network, then a narrowed one, each step
    grid = [list(range(16, w + 1, 16)) for w in (16, 16, 32, 32)]
    assert all(all(w in g for w, g in zip(ws, grid)) for ws in calls[1::2])
    assert len(set(calls[1::2])) > 1
    net, ckpt = load_supernet(out / "supernet.pt")
    assert net.channel_order == ckpt["meta"]["channel_order"] == "prefix"
    assert pd.read_csv(out / "metrics.csv")["train_loss"].iloc[0] > 1.8 * math.log(10)
    plain, _ = load_supernet(run(small_cfg(tmp_path / "plain", "train.epochs=1")) / "supernet.pt")
    assert plain.channel_order == "importance"


def test_width_sampling_refuses_ddp(tmp_path):
    from nas.training.supernet_run import train_supernet
    from nas.training.trainer import DistInfo

    with pytest.raises(ConfigError, match="one process"):
        train_supernet(small_cfg(tmp_path, "supernet.width_sampling=true"), DistInfo(rank=0, world_size=2))


@pytest.mark.slow
def test_two_process_ddp_on_gloo(tmp_path):
    r = torchrun("nas.train_supernet", [*SMALL, "train.epochs=2", f"out={tmp_path}"], port=29533)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "alpha max abs difference across 2 ranks: 0" in r.stderr + r.stdout
    ckpt = load_checkpoint(tmp_path / "supernet.pt", SUPERNET_KIND)
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    rng = ckpt["rng"]  # each rank's own RNG state, so that a resume restores each rank's own stream
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    r = torchrun("nas.train_supernet", [*SMALL, "train.epochs=3", f"resume={tmp_path}"], port=29535)
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "supernet.pt", SUPERNET_KIND)["epoch"] == 3


def test_extending_a_run_continues_the_cosine_over_the_new_length_and_keeps_tau_continuous(tmp_path):
    """Oracle for the learning rate: timm's CosineLRScheduler built for the extended length on its own."""
    from timm.scheduler import CosineLRScheduler

    run(small_cfg(tmp_path, "train.epochs=2", "train.warmup_epochs=0"))
    run(small_cfg(tmp_path / "x", "train.epochs=5", "train.warmup_epochs=0", f"resume={tmp_path}"))
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m["epoch"]) == [1, 2, 3, 4, 5]
    from nas.data import build_datasets

    full = small_cfg(tmp_path, "train.epochs=5", "train.warmup_epochs=0")
    full.data.input_size = full.space.input_size
    cfg = full.train
    steps = len(build_datasets(full.data).train) // cfg.batch_size  # drop_last
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr())
    oracle = CosineLRScheduler(opt, t_initial=5 * steps, lr_min=cfg.lr_min, t_in_epochs=False)
    for epoch in (3, 4):  # metrics record the lr after an epoch's last step
        assert m["lr"].iloc[epoch - 1] == pytest.approx(oracle._get_lr(epoch * steps)[0], rel=1e-6)
    assert m["lr"].iloc[2] > 5 * cfg.lr_min  # not stuck at lr_min (9.3x here), as timm's restored state had it
    tau = list(m["tau"])
    assert tau[2] <= tau[1] + 1e-12 and all(a >= b - 1e-12 for a, b in zip(tau, tau[1:]))  # never jumps back up
    assert tau[-1] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "change, key", [("data.val_size=300", "data.val_size"), ("supernet.noise=uniform", "supernet.noise")]
)
def test_resume_with_other_settings_is_refused_naming_the_key(tmp_path, change, key):
    run(small_cfg(tmp_path, "train.epochs=1"))
    with pytest.raises(TrainingError, match=rf"trained with {key}=.*this run has {key}="):
        run(small_cfg(tmp_path / "x", "train.epochs=2", change, f"resume={tmp_path}"))


def test_recipe_options_mixup_cutmix_ema_randaugment(tmp_path):
    out = run(
        small_cfg(
            tmp_path,
            "train.epochs=1",
            "train.mixup=0.8",
            "train.cutmix=1.0",
            "train.ema=true",
            "train.ema_decay=0.9",
            "data.auto_augment=rand-m9",
            "train.clip_grad=1.0",
        )
    )
    ckpt = load_checkpoint(out / "supernet.pt", SUPERNET_KIND)
    assert ckpt["ema"] is not None and ckpt["metrics"][0]["train_loss"] > 0
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"] if "weight" in k)


def test_hard_distillation_from_a_local_timm_teacher(tmp_path):
    import timm

    teacher = timm.create_model("resnet10t", num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    out = run(
        small_cfg(
            tmp_path / "run",
            "train.epochs=1",
            "train.distill.teacher=resnet10t",
            f"train.distill.checkpoint={tmp_path / 'teacher.pt'}",
        )
    )
    assert load_checkpoint(out / "supernet.pt", SUPERNET_KIND)["epoch"] == 1
    with pytest.raises(TrainingError, match="teacher checkpoint not found"):
        run(small_cfg(tmp_path / "x", "train.distill.teacher=resnet10t", f"train.distill.checkpoint={tmp_path}/no.pt"))
    with pytest.raises(TrainingError, match="does not load"):
        torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), tmp_path / "t5.pt")
        run(small_cfg(tmp_path / "y", "train.distill.teacher=resnet10t", f"train.distill.checkpoint={tmp_path}/t5.pt"))


@pytest.mark.gpu
@pytest.mark.parametrize("hard", ["false", "true"])
def test_train_supernet_on_gpu(tmp_path, hard):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = run(small_cfg(tmp_path, "train.epochs=2", "train.device=cuda", f"supernet.hard={hard}"))
    ckpt = load_checkpoint(out / "supernet.pt", SUPERNET_KIND)  # saved from the GPU, loads on the CPU
    assert ckpt["model"]["alphas.2"].device.type == "cpu" and ckpt["model"]["alphas.2"].abs().sum() > 0
    assert pd.read_csv(out / "metrics.csv")["val_acc"].iloc[-1] > 0.2


def test_train_device_cuda_without_a_gpu_is_one_clear_error(tmp_path):
    import torch

    from nas.training.trainer import TrainingError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(TrainingError, match="no CUDA device"):
        run(small_cfg(tmp_path, "train.epochs=1", "train.device=cuda"))
