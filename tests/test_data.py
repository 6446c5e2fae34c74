import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import FASHION_MNIST_ROOT, DataConfig, DataError, _read_idx, build_datasets


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    """A 40/10-image dataset in Fashion-MNIST's IDX layout, written by hand."""
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (40, 28, 28)), rng.integers(0, 10, 40)
    x_te, y_te = rng.integers(0, 256, (10, 28, 28)), rng.integers(0, 10, 10)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_tr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te)
    return tmp_path, x_tr, y_tr


def test_idx_reader_round_trip(fake_fashion):
    root, x_tr, y_tr = fake_fashion
    assert np.array_equal(_read_idx(root / "train-images-idx3-ubyte.gz"), x_tr)
    assert np.array_equal(_read_idx(root / "train-labels-idx1-ubyte.gz"), y_tr)


def test_truncated_idx_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">BBBBi", 0, 0, 8, 1, 100) + b"\x01" * 10)
    with pytest.raises(DataError, match="truncated"):
        _read_idx(p)


def test_val_is_carved_from_train_and_disjoint(fake_fashion):
    root, x_tr, y_tr = fake_fashion
    s = build_datasets(DataConfig(name="fashion_mnist", root=str(root), input_size=32, val_size=8, augment=False))
    assert (len(s.train), len(s.val), len(s.test)) == (32, 8, 10)
    train_imgs = {s.train.images[i].numpy().tobytes() for i in range(len(s.train))}
    val_imgs = [s.val.images[i].numpy().tobytes() for i in range(len(s.val))]
    all_train = {img.tobytes() for img in x_tr.astype(np.uint8)[:, None]}
    assert not train_imgs & set(val_imgs)  # disjoint
    assert set(val_imgs) <= all_train  # and taken from the training file
    x, y = s.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.equal(x[0], x[1])  # grey -> 3 channels


def test_split_is_seeded(fake_fashion):
    root, *_ = fake_fashion
    cfg = DataConfig(name="fashion_mnist", root=str(root), input_size=32, val_size=8)
    a, b = build_datasets(cfg), build_datasets(cfg)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.root=.*data=digits"):
        build_datasets(DataConfig(root=str(tmp_path)))


def test_missing_dataset_cli_is_one_line_and_nonzero(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "nas.data", f"data.root={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: Fashion-MNIST not found")


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    s = build_datasets(DataConfig())
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (55000, 5000, 10000, 10)
    x, y = s.test[0]
    assert x.shape == (3, 64, 64) and 0 <= y < 10


def test_digits_and_synthetic():
    d = build_datasets(DataConfig(name="digits", input_size=32, val_size=200))
    assert (len(d.train), len(d.val), len(d.test)) == (1238, 200, 359)
    assert set(d.train.labels.tolist()) == set(range(10))
    s = build_datasets(DataConfig(name="synthetic", input_size=32, val_size=16, synthetic_size=64, num_classes=3))
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (48, 16, 16, 3)
    assert s.train[0][0].shape == (3, 32, 32)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    s = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path), input_size=32, val_size=4))
    assert (len(s.train), len(s.val), len(s.test), s.num_classes) == (8, 4, 4, 2)
    assert s.val[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (DataConfig(name="mnist"), "unknown"),
        (DataConfig(name="digits", input_size=40), "multiple of 32"),
        (DataConfig(name="digits", input_size=32, val_size=5000), "val_size"),
        (DataConfig(name="imagefolder"), "data.root"),
    ],
)
def test_bad_data_config(cfg, match):
    with pytest.raises(DataError, match=match):
        build_datasets(cfg)
