"""nas.train (scratch, inherited, resume), nas.export (ONNX, TorchScript, CoreML) and nas.pipeline."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nas.checkpoint import TRAIN_KIND, CheckpointError, load_checkpoint
from nas.config import ConfigError, compose
from nas.export import ExportConfig
from nas.export import run as export
from nas.search.loading import load_weights
from nas.slim import run as slim
from nas.train import TrainModelConfig
from nas.train import run as train
from supernet import build_model
from supernet.arch import ArchSpec
from supernet.formats import ExportError
from tests.helpers import FAST, SMALL_TRAINING, slim_cfg, torchrun

DATA = ["data=digits", "train.batch_size=64", "train.eval_batch_size=200", "train.threads=1"]


@pytest.fixture(scope="session")
def slimmed(trained, tmp_path_factory):
    """An arch.yaml + weights.pt emitted by nas.slim from the shared small supernet."""
    sn, lut, start_ms = trained
    out = tmp_path_factory.mktemp("slimmed")
    t = round(start_ms * 0.7, 4)
    slim(slim_cfg(trained, out, [t]))
    return out / f"target_{t:g}ms"


def train_cfg(arch, out, *extra):
    return compose("train", [f"arch={arch}", f"out={out}", *DATA, *extra], TrainModelConfig)


def _params(state):
    return {k: v for k, v in state.items() if not any(s in k for s in ("running_", "num_batches"))}


def test_train_scratch_writes_metrics(slimmed, tmp_path):
    out = train(train_cfg(slimmed / "arch.yaml", tmp_path, "train.epochs=1"))
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test_top1"] <= 1.0 and m["epochs"] == 1 and m["init"] == "scratch"
    spec = ArchSpec.load(slimmed / "arch.yaml")
    from supernet.complexity import count_params

    assert m["params_M"] == pytest.approx(count_params(build_model(spec)) / 1e6)
    assert m["predicted_ms"] is not None and m["predicted_ms"] > 0  # from the LUT recorded in arch.yaml
    assert (out / "curves.png").stat().st_size > 1000 and (out / "metrics.csv").is_file()
    inherited = _params(load_checkpoint(slimmed / "weights.pt", "efficientvit-nas/weights")["model"])
    trained_w = _params(load_checkpoint(out / "checkpoint.pt", TRAIN_KIND)["model"])
    assert any(not torch.equal(inherited[k], trained_w[k]) for k in inherited)


def test_train_inherited_starts_from_the_slimmer_weights(slimmed, tmp_path):
    """With a zero learning rate, training cannot move the weights: they must still be weights.pt's."""
    zero = ["train.lr_base=0", "train.lr_min=0", "train.warmup_lr=0", "train.epochs=1"]
    out = train(train_cfg(slimmed / "arch.yaml", tmp_path, "init=inherited", *zero))
    inherited = _params(load_checkpoint(slimmed / "weights.pt", "efficientvit-nas/weights")["model"])
    after = _params(load_checkpoint(out / "checkpoint.pt", TRAIN_KIND)["model"])
    assert set(inherited) == set(after)
    assert all(torch.equal(inherited[k], after[k]) for k in inherited)


def test_train_preset_and_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="init="):
        train(train_cfg("l1", tmp_path / "a", "init=warm"))
    with pytest.raises(ConfigError, match="weights=PATH"):
        train(train_cfg("l1", tmp_path / "b", "init=inherited", "data.input_size=32"))
    with pytest.raises(CheckpointError, match="no|not found"):
        train(train_cfg("l1", tmp_path / "c", f"resume={tmp_path / 'nowhere'}"))


def test_train_resume_equals_uninterrupted(slimmed, tmp_path):
    full = train(train_cfg(slimmed / "arch.yaml", tmp_path / "full", "train.epochs=2"))
    part = train(train_cfg(slimmed / "arch.yaml", tmp_path / "part", "train.epochs=2", "train.stop_after_epochs=1"))
    assert not (part / "metrics.json").exists()
    train(train_cfg(slimmed / "arch.yaml", tmp_path / "x", "train.epochs=2", f"resume={part}"))
    a = load_checkpoint(full / "checkpoint.pt", TRAIN_KIND)["model"]
    b = load_checkpoint(part / "checkpoint.pt", TRAIN_KIND)["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    assert (
        json.loads((part / "metrics.json").read_text())["test_top1"]
        == json.loads((full / "metrics.json").read_text())["test_top1"]
    )


def test_export_onnx_matches_unfused_torch(slimmed, tmp_path):
    rep = export(
        compose(
            "export",
            [f"arch={slimmed / 'arch.yaml'}", f"weights={slimmed / 'weights.pt'}", "format=onnx", f"out={tmp_path}"],
            ExportConfig,
        )
    )
    assert rep["max_abs_diff_vs_torch"] <= 1e-4 and rep["measured_ms"] > 0 and rep["predicted_ms"] > 0
    import onnxruntime as ort

    _, model = load_weights(slimmed / "weights.pt")  # the independent, *unfused* torch model
    x = torch.randn(3, 3, 32, 32)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for i in range(3):
        (y,) = sess.run(None, {"image": x[i : i + 1].numpy()})
        with torch.no_grad():
            ref = model(x[i : i + 1]).numpy()
        assert np.abs(y - ref).max() <= 1e-4
    assert json.loads((tmp_path / "export_onnx.json").read_text())["format"] == "onnx"


def test_export_torchscript_and_errors(slimmed, tmp_path):
    rep = export(
        compose("export", [f"arch={slimmed / 'arch.yaml'}", "format=torchscript", f"out={tmp_path}"], ExportConfig)
    )
    assert rep["max_abs_diff_vs_torch"] <= 1e-4 and (tmp_path / "model.pt").is_file()
    with pytest.raises(ConfigError, match="format"):
        export(compose("export", [f"arch={slimmed / 'arch.yaml'}", "format=tflite", f"out={tmp_path}"], ExportConfig))
    with pytest.raises(CheckpointError, match="another architecture"):
        export(compose("export", ["arch=l1", f"weights={slimmed / 'weights.pt'}", f"out={tmp_path}"], ExportConfig))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_check_catches_a_faulty_fusion(slimmed, tmp_path, monkeypatch, fmt):
    """The check must compare with the unfused model: break fuse() and the export has to fail."""
    from supernet.model import EfficientViT

    real_fuse = EfficientViT.fuse

    def faulty_fuse(self):
        real_fuse(self)
        with torch.no_grad():
            self.head.bias.add_(0.5)  # a folding bug
        return self

    monkeypatch.setattr(EfficientViT, "fuse", faulty_fuse)
    with pytest.raises(ExportError, match="differs from torch"):
        export(compose("export", [f"arch={slimmed / 'arch.yaml'}", f"format={fmt}", f"out={tmp_path}"], ExportConfig))
    assert not (tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")).exists()  # nothing half-written


@pytest.mark.slow
def test_export_coreml_converts_on_linux(slimmed, tmp_path):
    rep = export(
        compose(
            "export",
            [f"arch={slimmed / 'arch.yaml'}", f"weights={slimmed / 'weights.pt'}", "format=coreml", f"out={tmp_path}"],
            ExportConfig,
        )
    )
    pkg = tmp_path / "model.mlpackage"
    assert pkg.is_dir() and (pkg / "Manifest.json").is_file()
    if sys.platform != "darwin":
        assert rep["checked_with"] is None and "needs macOS" in rep["note"]
    else:
        assert rep["max_abs_diff_vs_torch"] <= 1e-2


def test_pipeline_chains_every_step(tmp_path):
    from nas.pipeline import run as pipeline

    quick = [*SMALL_TRAINING, "train.epochs=1", *FAST, "val_images=100", "bn_batches=1"]
    first = pipeline(1000.0, tmp_path, quick)  # above any start latency: the unslimmed architecture
    assert set(first["wall_s"]) == {"train_supernet", "build_lut", "slim", "train", "export"}
    start_ms = float(pd.read_csv(tmp_path / "slim" / "trajectory.csv")["predicted_ms"].iloc[0])
    t = round(0.7 * start_ms, 4)  # relative to this machine's own LUT, so reachable and needing steps on any CPU
    rep = pipeline(t, tmp_path, quick)
    assert {"slim", "train", "export"} <= set(rep["wall_s"]) and "train_supernet" not in rep["wall_s"]  # new target
    meta = yaml.safe_load((tmp_path / "slim" / f"target_{t:g}ms" / "arch.yaml").read_text())["meta"]
    assert meta["slimming_step"] > 0 and meta["measured_ms"] <= t  # slimmed, and verified on measurement
    assert 0 <= rep["test_top1"] <= 1 and (tmp_path / "export" / "model.onnx").is_file()
    again = pipeline(t, tmp_path, quick)  # finished steps are skipped on a re-run
    assert "train_supernet" not in again["wall_s"] and "train" not in again["wall_s"]
    assert "slim" not in again["wall_s"]
    # a changed input re-runs its step and everything downstream (here: the slimmer's scoring set)
    changed = pipeline(t, tmp_path, [*quick[:-2], "val_images=80", "bn_batches=1"])
    assert "train_supernet" not in changed["wall_s"] and {"slim", "train"} <= set(changed["wall_s"])
    assert Path(tmp_path / "pipeline.json").is_file()


def test_pipeline_routes_a_group_key_only_to_the_steps_where_it_is_a_group():
    """`supernet.hard=true` reaches train_supernet (`supernet` is its config group) and not slim, whose `supernet`
    is the checkpoint's path; a plain key reaches every step that has it."""
    from nas.search.slimming import SlimConfig
    from nas.training.model import TrainModelConfig
    from nas.training.supernet_run import TrainSupernetConfig
    from nas.workflow import route

    given = ["supernet.hard=true", "train.seed=1", "data=digits", "val_images=80", "+space.unknown=1"]
    assert route(given, TrainSupernetConfig) == [*given[:3], "+space.unknown=1"]
    assert route(given, SlimConfig) == ["val_images=80"]
    assert route(given, TrainModelConfig) == ["train.seed=1", "data=digits"]


@pytest.mark.slow
def test_train_two_process_ddp(slimmed, tmp_path):
    r = torchrun("nas.train", [f"arch={slimmed / 'arch.yaml'}", *DATA, "train.epochs=1", f"out={tmp_path}"], port=29534)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 1


def test_export_measures_only_on_the_luts_own_device(slimmed, trained, tmp_path):
    import pandas as pd

    lut = tmp_path / "mac.csv"
    pd.read_csv(trained[1]).assign(device="Apple M2").to_csv(lut, index=False)  # a LUT measured elsewhere
    rep = export(compose("export", [f"arch={slimmed / 'arch.yaml'}", f"out={tmp_path}", f"lut={lut}"], ExportConfig))
    assert rep["predicted_ms"] > 0 and rep["measured_ms"] is None and "Apple M2" in rep["latency_note"]
    here = export(
        compose("export", [f"arch={slimmed / 'arch.yaml'}", f"out={tmp_path}", f"lut={trained[1]}"], ExportConfig)
    )
    assert here["measured_ms"] > 0  # on its own device it is measured
