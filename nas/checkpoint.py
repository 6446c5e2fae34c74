"""Atomic checkpoint writing and safe (`weights_only=True`) loading with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from supernet.errors import UserError

# The `kind` tag of every checkpoint this project writes.
SUPERNET_KIND = "efficientvit-nas/supernet"  # nas.train_supernet: supernet.pt
TRAIN_KIND = "efficientvit-nas/train"  # nas.train: checkpoint.pt
WEIGHTS_KIND = "efficientvit-nas/weights"  # nas.slim: weights.pt (inherited weights of an emitted arch)


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, of the wrong kind, or from another search space."""


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, synced, then renamed over it (`supernet.files.atomic_write`):
    a crash or power cut never leaves a half or empty checkpoint."""
    from supernet.files import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Load a checkpoint written by this project (`weights_only=True`), checking its `kind` tag (one kind, or
    a tuple of accepted kinds)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a bad file; all mean the same thing here
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint"
        ) from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in kinds:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a {' or '.join(kinds)} checkpoint (found {found!r})")
    return ckpt


def load_model_weights(
    path: str | Path, spec: Any = None, kinds: tuple[str, ...] = (WEIGHTS_KIND, TRAIN_KIND)
) -> tuple[Any, dict[str, torch.Tensor]]:
    """(spec, state_dict) of the model weights in `path`: nas.slim's weights.pt or nas.train's checkpoint.pt.
    With `spec` (an `ArchSpec`), weights saved for another architecture are refused. The one way weights are
    loaded into `build_model(spec)`, by nas.train (init=inherited), nas.export and the API."""
    from supernet.arch import ArchSpec

    ckpt = load_checkpoint(path, kinds)
    saved = ckpt.get("spec") or ckpt.get("meta", {}).get("spec")
    saved = None if saved is None else ArchSpec.from_dict(saved)
    if spec is not None and saved is not None and saved != spec:
        raise CheckpointError(
            f"{path} holds weights for another architecture ({saved.describe()}), not {spec.describe()}"
        )
    if spec is None and saved is None:
        raise CheckpointError(f"{path} records no architecture; pass the arch it was trained for")
    return saved if saved is not None else spec, ckpt["model"]
