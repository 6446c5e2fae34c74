"""Accuracy of a search state: the supernet restricted to it (weights physically sliced, BN statistics
re-estimated on training batches), evaluated on fixed held-out batches."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from nas.data import DataConfig, build_datasets
from nas.search.state import SlimState
from supernet.model import EfficientViT
from supernet.supernet import SuperNet

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class SubnetEvaluator:
    """Accuracy of a slimming state: extract the sliced sub-network, re-estimate BN statistics on cached
    training batches, then evaluate on cached held-out validation batches."""

    def __init__(self, net: SuperNet, val: Batches, bn: list[torch.Tensor]):
        self.net, self.val, self.bn = net, val, bn

    @torch.no_grad()
    def model(self, state: SlimState) -> EfficientViT:
        sub = self.net.extract(state.choices, state.widths)
        recalibrate_bn(sub, self.bn)
        return sub.eval()

    @torch.no_grad()
    def __call__(self, state: SlimState) -> float:
        return evaluate(self.model(state), self.val)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over `batches`."""
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    for x in batches:
        model(x)
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy of `model` over `batches`."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(-1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def cached_batches(
    data_cfg: DataConfig, val_images: int, bn_batches: int, batch_size: int, seed: int = 0
) -> tuple[Batches, list[torch.Tensor]]:
    """Fixed validation and BN-calibration batches, loaded once (evaluation dominates the cost): the first
    `val_images` of the validation split, and `bn_batches` training batches drawn by a generator seeded with
    `seed`. Both are un-augmented images."""
    data_cfg = dataclasses.replace(data_cfg, augment=False, auto_augment=None)  # plain images, no random transform
    splits = build_datasets(data_cfg)
    val_idx = list(range(min(val_images, len(splits.val))))
    g = torch.Generator().manual_seed(seed)
    bn_idx = torch.randperm(len(splits.train), generator=g)[: bn_batches * batch_size].tolist()

    def stack(ds, idx):
        items = [ds[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    vx, vy = stack(splits.val, val_idx)
    bx, _ = stack(splits.train, bn_idx)
    val = [(vx[i : i + batch_size], vy[i : i + batch_size]) for i in range(0, len(vy), batch_size)]
    bn = [bx[i : i + batch_size] for i in range(0, len(bx), batch_size)]
    return val, bn
