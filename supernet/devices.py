"""Where tensors live: `resolve_device` turns a config's `device` value (auto, cpu, cuda, cuda:N) into a
`torch.device`, for training (`train.device`) and slimming (`nas.slim device=`) alike."""

from __future__ import annotations

import os

import torch

from supernet.errors import ConfigError, UserError


def resolve_device(name: str, key: str = "device", error: type[UserError] = ConfigError) -> torch.device:
    """`auto` picks this rank's GPU (LOCAL_RANK under torchrun, else 0) when CUDA is available, else the CPU; `cuda`
    without an index means that same GPU. A value that is not a device, or a GPU this machine lacks, raises `error`
    naming `key`."""
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{key}={name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{key}={name!r}: no CUDA device is available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", rank)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise error(f"{key}={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise error(f"{key}={name!r}: not supported; use auto, cpu, cuda or cuda:N")
    return device
