"""Parameter and MAC counts.

Counting rule (MACs = multiply-accumulates, batch 1, the unfused model):
  * every `nn.Conv2d` and `nn.Linear`: output elements x (input channels / groups) x kernel area;
  * the two attention matmuls of each MB3D: Q.K^T and attn.V, i.e. heads x N^2 x (key_dim + val_dim);
  * nothing else: BN, LayerNorm, activations, pooling, softmax, bias and residual adds are not counted.
The classifier and the distillation head are both counted, since inference averages the two.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

from supernet.arch import ArchSpec
from supernet.blocks import Attention


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> dict[str, int]:
    """MACs per top-level child of `model` (e.g. `stem`, `stages.0`, ..., `head`) for one image."""
    per_part: dict[str, int] = defaultdict(int)
    hooks = []

    def part_of(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "stages" else parts[0]

    def make_hook(name: str, m: nn.Module):
        def hook(mod, inputs, output):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                per_part[part_of(name)] += output.numel() * k
            elif isinstance(mod, nn.Linear):
                per_part[part_of(name)] += output.numel() * mod.in_features
            elif isinstance(mod, Attention):
                n = inputs[0].shape[1]
                per_part[part_of(name)] += mod.num_heads * n * n * (mod.key_dim + mod.val_dim) * inputs[0].shape[0]

        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, Attention)):
            hooks.append(m.register_forward_hook(make_hook(name, m)))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros(1, in_chans, input_size, input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return dict(per_part)


def complexity_table(spec: ArchSpec, title: str = "") -> str:
    """Parameters and MACs per part (stem, each stage, the heads) and in total, as `python -m nas.profile` prints."""
    from supernet.model import build_model

    model = build_model(spec)
    macs = count_macs(model, spec.input_size, spec.in_chans)
    head = f"{title + ': ' if title else ''}input {spec.input_size}px, depths {spec.depths}, widths {spec.widths}"
    rows = [f"{head}, MB3D {spec.num_3d}", f"{'part':<10}{'params':>12}{'MACs':>12}"]
    parts = [(p, m) for p, m in model.named_children() if p != "stages"]
    parts[1:1] = [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)]  # right after the stem
    for part, module in parts:
        n, m = count_params(module), macs.get(part, 0)
        if n or m:
            rows.append(f"{part:<10}{n / 1e6:>11.2f}M{m / 1e9:>11.3f}G")
    rows.append(f"{'total':<10}{count_params(model) / 1e6:>11.2f}M{sum(macs.values()) / 1e9:>11.3f}G")
    rows.append("MACs: conv + linear + attention matmuls at batch 1; BN/LN/activations/pooling/softmax not counted")
    return "\n".join(rows)
