"""Datasets: each gives a train split, a validation split held out *from the training data* (used to
score search actions), and a test split. Images come out as float (3, S, S) tensors, normalised, with
grey images repeated to 3 channels and resized to the configured input size S.

    fashion_mnist  real data (60k train / 10k test, 10 classes), IDX .gz files from `root`
                   (default: Debian's `apt-get install dataset-fashion-mnist` location)
    digits         scikit-learn's bundled 8x8 digits (1797 images): always available offline
    imagefolder    ImageNet layout `root/train/<class>/*`, `root/val/<class>/*`, with timm transforms
    synthetic      random tensors with random labels: for speed tests only
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from supernet.errors import UserError

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DATASETS = ("fashion_mnist", "digits", "imagefolder", "synthetic")


class DataError(UserError):
    """A dataset is missing or malformed."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: str | None = None  # None: the dataset's default location (fashion_mnist: Debian's path)
    input_size: int = 64  # images are resized to input_size x input_size
    val_size: int = 5000  # images held out of the training split for validation / scoring search actions
    train_limit: int = 0  # >0: keep only this many training images (quick runs); the val split is unaffected
    augment: bool = True  # random horizontal flip for tensor datasets; timm's train transform for imagefolder
    auto_augment: str | None = None  # e.g. "rand-m9-mstd0.5": timm's RandAugment (imagefolder); torchvision's
    #                                   RandAugment at magnitude m for tensor datasets (train split only)
    seed: int = 0  # fixes the train/val carve-up
    num_workers: int = 0
    # synthetic only
    num_classes: int = 10
    synthetic_size: int = 512


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_chans: int = 3


class TensorImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, C, H, W), resized and normalised one at a time.

    Keeping uint8 at native size (Fashion-MNIST: 47 MB) instead of float at 64 px (3.4 GB) is what makes the
    whole dataset fit comfortably in memory."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        mean: float,
        std: float,
        flip: bool = False,
        max_value: float = 255.0,
        rand_augment: torch.nn.Module | None = None,
    ):
        if images.ndim == 3:
            images = images[:, None]
        self.images, self.labels = images, labels.long()
        self.size, self.mean, self.std, self.flip, self.max_value = size, mean, std, flip, max_value
        self.rand_augment = rand_augment  # applied to the uint8 image (torchvision RandAugment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.rand_augment is not None:
            img = self.rand_augment(img if img.dtype == torch.uint8 else img.mul(255 / self.max_value).byte())
            img = img.float() * (self.max_value / 255)
        x = img.float().div(self.max_value)[None]  # (1, C, H, W)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x[0] - self.mean) / self.std
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous(), int(self.labels[i])


def _read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({arr.size} values, header says {int(np.prod(dims))})")
    return arr.reshape(tuple(int(d) for d in dims))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST not found: no {stem}(.gz) in {root}. Install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian), point data.root= at a folder with the IDX files, "
        f"or run on scikit-learn's digits with data=digits"
    )


def _carve(n: int, val_size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (train_idx, val_idx)."""
    if not 0 < val_size < n:
        raise DataError(f"data.val_size={val_size} must be between 1 and {n - 1} for {what} ({n} training images)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _limit(idx: np.ndarray, limit: int) -> np.ndarray:
    return idx[:limit] if limit > 0 else idx


def _tensor_splits(cfg: DataConfig, x_tr, y_tr, x_te, y_te, num_classes: int, max_value: float) -> Splits:
    """Splits for an in-memory dataset; normalisation statistics come from the training images only."""
    tr_idx, va_idx = _carve(len(y_tr), cfg.val_size, cfg.seed, cfg.name)
    tr_idx = _limit(tr_idx, cfg.train_limit)
    x_tr, y_tr = torch.as_tensor(x_tr), torch.as_tensor(y_tr)
    x_te, y_te = torch.as_tensor(x_te), torch.as_tensor(y_te)
    sample = x_tr[torch.as_tensor(tr_idx[:10000])].float() / max_value
    mean, std = sample.mean().item(), sample.std().item()

    ra = rand_augment(cfg.auto_augment)

    def make(x, y, train):
        return TensorImages(
            x,
            y,
            cfg.input_size,
            mean,
            std,
            flip=train and cfg.augment,
            max_value=max_value,
            rand_augment=ra if train else None,
        )

    tr_idx_t, va_idx_t = torch.as_tensor(tr_idx), torch.as_tensor(va_idx)
    return Splits(
        train=make(x_tr[tr_idx_t], y_tr[tr_idx_t], True),
        val=make(x_tr[va_idx_t], y_tr[va_idx_t], False),
        test=make(x_te, y_te, False),
        num_classes=num_classes,
    )


def rand_augment(spec: str | None) -> torch.nn.Module | None:
    """torchvision's RandAugment for uint8 tensor images, from a timm-style string "rand-m<magnitude>-...".

    >>> rand_augment("rand-m7-mstd0.5").magnitude
    7
    """
    if not spec:
        return None
    import re

    from torchvision.transforms import RandAugment

    if not spec.startswith("rand"):
        raise DataError(f"data.auto_augment={spec!r}: tensor datasets support RandAugment strings like 'rand-m9'")
    m = re.search(r"-m(\d+)", spec)
    return RandAugment(num_ops=2, magnitude=int(m.group(1)) if m else 9)


def fashion_mnist(cfg: DataConfig) -> Splits:
    root = Path(cfg.root or FASHION_MNIST_ROOT)
    x_tr = _read_idx(_find(root, "train-images-idx3-ubyte"))
    y_tr = _read_idx(_find(root, "train-labels-idx1-ubyte"))
    x_te = _read_idx(_find(root, "t10k-images-idx3-ubyte"))
    y_te = _read_idx(_find(root, "t10k-labels-idx1-ubyte"))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"Fashion-MNIST in {root}: image and label counts differ")
    return _tensor_splits(cfg, x_tr.copy(), y_tr.astype(np.int64), x_te.copy(), y_te.astype(np.int64), 10, 255.0)


def digits(cfg: DataConfig) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    rest, test = _carve(len(y), len(y) // 5, 12345, "digits test split")  # fixed test split, independent of seed
    return _tensor_splits(cfg, x[rest], y[rest], x[test], y[test], 10, 16.0)


def synthetic(cfg: DataConfig) -> Splits:
    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.synthetic_size
    x = torch.randint(0, 256, (n + n // 4, 3, cfg.input_size, cfg.input_size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, cfg.num_classes, (n + n // 4,), generator=g)
    return _tensor_splits(cfg, x[:n], y[:n], x[n:], y[n:], cfg.num_classes, 255.0)


def imagefolder(cfg: DataConfig) -> Splits:
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    if not cfg.root:
        raise DataError("data.root must be set for imagefolder (a folder with train/ and val/ subfolders)")
    root = Path(cfg.root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(
                f"imagefolder: {root / sub} not found; expected ImageNet layout root/{{train,val}}/<class>/"
            )
    train_tf = create_transform(cfg.input_size, is_training=cfg.augment, auto_augment=cfg.auto_augment)
    eval_tf = create_transform(cfg.input_size, is_training=False)
    train_full = ImageFolder(str(root / "train"), transform=train_tf)
    val_full = ImageFolder(str(root / "train"), transform=eval_tf)
    tr_idx, va_idx = _carve(len(train_full), cfg.val_size, cfg.seed, cfg.name)
    return Splits(
        train=Subset(train_full, _limit(tr_idx, cfg.train_limit).tolist()),
        val=Subset(val_full, va_idx.tolist()),
        test=ImageFolder(str(root / "val"), transform=eval_tf),
        num_classes=len(train_full.classes),
    )


def build_datasets(cfg: DataConfig) -> Splits:
    builders = {"fashion_mnist": fashion_mnist, "digits": digits, "imagefolder": imagefolder, "synthetic": synthetic}
    if cfg.name not in builders:
        raise DataError(f"data.name={cfg.name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if cfg.input_size <= 0 or cfg.input_size % 32:
        raise DataError(f"data.input_size={cfg.input_size} must be a positive multiple of 32")
    splits = builders[cfg.name](cfg)
    log.info("data %s: %d train / %d val / %d test", cfg.name, len(splits.train), len(splits.val), len(splits.test))
    return splits
