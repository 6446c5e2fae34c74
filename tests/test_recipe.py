"""The training recipe's options, each against an oracle that fails when the option is off: Mixup and CutMix
(what the model is fed and the soft targets it is scored on), RandAugment (torchvision's own transform under the
same seed), gradient clipping (the gradient norm the optimizer steps with) and hard distillation (the DeiT loss
computed by hand from the two heads and the teacher)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas.data import DataConfig, TensorImages, build_datasets
from nas.training.trainer import DistillConfig, TrainConfig, Trainer, TrainingError
from supernet import build_model
from supernet.arch import ArchSpec, AttentionSpec, StageSpec

SPEC = ArchSpec(
    stages=(StageSpec(16, ("4d",)), StageSpec(16, ("4d",)), StageSpec(32, ("4d",)), StageSpec(32, ("4d", "3d"))),
    input_size=32,
    num_classes=10,
    attention=AttentionSpec(8, 2, 2.0),
)


def trainer(tmp_path, **train) -> Trainer:
    splits = build_datasets(DataConfig(name="digits", input_size=32, val_size=64, augment=False))
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 16, "threads": 1, "label_smoothing": 0.0, **train})
    return Trainer(build_model(SPEC), splits, cfg, tmp_path, meta={})


def fed_to_model(tr: Trainer, x: torch.Tensor, y: torch.Tensor):
    """The trainer's loss on (x, y), with the input the model actually received and its logits."""
    seen = []
    handle = tr.model.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), out)))
    loss, _ = tr.loss(x.clone(), y)  # Mixup works in place: keep our x intact
    handle.remove()
    (xin, logits), *_ = seen
    return loss, xin, logits


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits, -1), -1).mean()


def batch(tr: Trainer):
    torch.manual_seed(1)
    return next(iter(tr.train_loader))


def test_mixup_feeds_a_convex_pair_and_scores_mixed_targets(tmp_path):
    tr = trainer(tmp_path, mixup=0.8)
    x, y = batch(tr)
    loss, xin, logits = fed_to_model(tr, x, y)
    xf = x.flip(0)
    lam = float(((xin - xf) * (x - xf)).sum() / ((x - xf) ** 2).sum())  # least squares: xin = lam x + (1-lam) xf
    assert 0 < lam < 1 and torch.allclose(xin, lam * x + (1 - lam) * xf, atol=1e-5)
    target = lam * F.one_hot(y, 10) + (1 - lam) * F.one_hot(y.flip(0), 10)
    assert loss.item() == pytest.approx(soft_ce(logits, target).item(), rel=1e-5)
    _, xin0, _ = fed_to_model(trainer(tmp_path / "off"), x, y)
    assert torch.equal(xin0, x)  # without mixup the batch goes in as it is


def test_cutmix_pastes_one_box_from_the_flipped_batch_and_scores_its_area(tmp_path):
    tr = trainer(tmp_path, cutmix=1.0)
    x, y = batch(tr)
    loss, xin, logits = fed_to_model(tr, x, y)
    xf = x.flip(0)
    changed = (xin != x).any(0).any(0)  # (H, W): pixels taken from the other image
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert len(rows) and len(cols)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    assert changed[box].all() and changed.sum() == changed[box].numel()  # one rectangle
    assert torch.equal(xin[:, :, box[0], box[1]], xf[:, :, box[0], box[1]])
    area = changed[box].numel() / changed.numel()
    target = (1 - area) * F.one_hot(y, 10) + area * F.one_hot(y.flip(0), 10)
    assert loss.item() == pytest.approx(soft_ce(logits, target).item(), rel=1e-5)


def test_randaugment_is_torchvisions_on_the_training_split_only():
    from torchvision.transforms import RandAugment

    splits = build_datasets(
        DataConfig(name="digits", input_size=32, val_size=64, augment=False, auto_augment="rand-m9")
    )
    train = splits.train
    assert splits.val.rand_augment is None and splits.test.rand_augment is None
    raw = (train.images.float() * (255 / train.max_value)).byte()
    oracle = RandAugment(num_ops=2, magnitude=9)
    differs = 0
    for i in range(8):
        torch.manual_seed(100 + i)
        got, _ = train[i]
        torch.manual_seed(100 + i)
        by_hand = oracle(raw[i]).float() * (train.max_value / 255)
        plain = TensorImages(
            by_hand[None], train.labels[i : i + 1], 32, train.mean, train.std, max_value=train.max_value
        )
        assert torch.allclose(got, plain[0][0], atol=1e-6)
        unaugmented = TensorImages(train.images[i : i + 1], train.labels[i : i + 1], 32, train.mean, train.std)
        unaugmented.max_value = train.max_value
        differs += not torch.allclose(got, unaugmented[0][0], atol=1e-4)
    assert differs >= 4  # the option changes what the model sees


def grad_norm(tr: Trainer) -> float:
    """The total gradient norm over the parameters the trainer clips."""
    grads = [p.grad for _, p in tr.weight_params() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


def test_gradient_clipping_bounds_the_norm_the_optimizer_steps_with(tmp_path):
    # the trainer's own epoch loop, with clipping on: every step's gradient norm is at most the bound
    tr = trainer(tmp_path, clip_grad=0.01)
    norms = []
    step = tr.optimizer.step

    def recording_step(*a, **k):
        norms.append(grad_norm(tr))
        return step(*a, **k)

    tr.optimizer.step = recording_step
    tr.train_one_epoch(0)
    assert norms and max(norms) <= 0.01 * (1 + 1e-4)
    # without clipping the same model's gradients are far larger, so the bound above was the clipping's doing
    unclipped = trainer(tmp_path / "off")
    x, y = batch(unclipped)
    loss, _ = unclipped.loss(x, y)
    loss.backward()
    assert grad_norm(unclipped) > 0.1


def test_hard_distillation_loss_is_deits_from_both_heads_and_the_teacher(tmp_path):
    import timm

    teacher = timm.create_model("resnet10t", num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    distill = DistillConfig(teacher="resnet10t", checkpoint=str(tmp_path / "teacher.pt"), weight=0.3)
    tr = trainer(tmp_path / "run", distill=distill)
    x, y = batch(tr)
    loss, _ = tr.loss(x, y)
    cls, dist = tr.model(x)  # train mode, no drop path: the same outputs the loss saw
    with torch.no_grad():
        teacher_labels = tr.teacher(x).argmax(-1)
    by_hand = 0.7 * F.cross_entropy(cls, y) + 0.3 * F.cross_entropy(dist, teacher_labels)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert abs(loss.item() - F.cross_entropy(cls, y).item()) > 1e-3  # the teacher's term matters


def test_bf16_autocast_runs_in_bf16_and_follows_the_fp32_loss_curve(tmp_path, monkeypatch):
    """`train.amp=bf16`: the convolutions and matmuls run in bf16 (seen inside the model), and two epochs from the
    same seed end within 0.05 nats of fp32's per-epoch training loss (bf16 keeps 8 mantissa bits: about 0.4% per
    op). `auto` on the CPU is bf16 to the bit where the CPU has bf16 instructions, and plain fp32 to the bit where
    it has not (both cases made here by patching the CPU probe)."""
    import nas.training.trainer as trainer_mod

    dtypes = []
    runs = {}
    for amp, native in (("off", False), ("bf16", False), ("auto", False), ("auto", True)):
        monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda native=native: native)
        key = f"{amp}{'+native' if native else ''}"
        torch.manual_seed(0)
        tr = trainer(tmp_path / key, amp=amp, epochs=2, lr_base=4e-3)
        conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, a, out, key=key: dtypes.append((key, out.dtype)))
        runs[key] = [tr.train_one_epoch(e)["train_loss"] for e in range(2)]
        hook.remove()
        assert tr.precision == ("bf16" if amp == "bf16" or native else "fp32")
    assert {d for k, d in dtypes if k in ("bf16", "auto+native")} == {torch.bfloat16}
    assert {d for k, d in dtypes if k in ("off", "auto")} == {torch.float32}
    assert runs["auto"] == runs["off"] and runs["auto+native"] == runs["bf16"]
    assert runs["bf16"] != runs["off"] and runs["bf16"] == pytest.approx(runs["off"], abs=0.05)
    assert runs["off"][1] < runs["off"][0] - 0.1  # it learned: the comparison is over a falling curve
    with pytest.raises(TrainingError, match="train.amp='fp8'; choose one of auto, bf16, off"):
        trainer(tmp_path / "bad", amp="fp8")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags from Linux's /proc/cpuinfo")
def test_the_bf16_probe_agrees_with_the_kernels_cpu_flags():
    """`train.amp=auto` picks bf16 on the CPU exactly where the kernel lists a bf16 instruction set."""
    from nas.training.trainer import cpu_has_native_bf16

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_forced_bf16_on_a_cpu_without_bf16_instructions_warns_once(tmp_path, monkeypatch, caplog):
    import nas.training.trainer as trainer_mod

    for native in (True, False):
        monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        trainer(tmp_path / str(native), amp="bf16")
        warned = [r for r in caplog.records if r.levelname == "WARNING" and "emulates" in r.getMessage()]
        assert len(warned) == (0 if native else 1)


def test_test_accuracy_is_measured_in_fp32_after_bf16_training(tmp_path):
    """`evaluate(..., fp32=True)` (the test top-1 that nas.train reports) runs the model in fp32 under train.amp=bf16,
    and gives the same top-1 as a trainer with autocast off on the same weights."""
    tr = trainer(tmp_path / "bf16", amp="bf16")
    ref = trainer(tmp_path / "off", amp="off")
    ref.model.load_state_dict(tr.model.state_dict())
    conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
    dtypes = []
    hook = conv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    top1 = tr.evaluate(tr.val_loader, fp32=True)
    assert set(dtypes) == {torch.float32}
    tr.evaluate(tr.val_loader)
    hook.remove()
    assert dtypes[-1] == torch.bfloat16  # without fp32=True the same call runs under the run's bf16
    assert top1 == ref.evaluate(ref.val_loader)


def test_channels_last_trains_the_same_model(tmp_path):
    """`train.channels_last`: parameters and inputs in NHWC, the same losses as NCHW up to float reassociation."""
    runs, formats = {}, []
    for cl in (False, True):
        torch.manual_seed(0)
        tr = trainer(tmp_path / str(cl), channels_last=cl)
        hook = tr.model.stem.register_forward_hook(
            lambda m, a, out, cl=cl: formats.append((cl, a[0].is_contiguous(memory_format=torch.channels_last)))
        )
        runs[cl] = tr.train_one_epoch(0)["train_loss"]
        hook.remove()
    assert {f for c, f in formats if c} == {True} and {f for c, f in formats if not c} == {False}
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
