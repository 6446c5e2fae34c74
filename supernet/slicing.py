"""Physically narrowing a network: keep the most important channels of a stage and slice every weight that
reads from or writes to them, so that the sliced weights load into `build_model(narrower spec)`.

Channel criterion (documented default): a stage's residual-stream channel c scores the L1 norm of every
weight that writes to or reads from c within the stage: the embedding (or stem) conv filter producing c, and
in each active block the MLP/attention weights reading c (fc1 / qkv input columns) and writing c (fc2 / proj
output rows). The top-`width` channels are kept, in their original order. When a stage narrows, each block's
MLP hidden layer (mlp_ratio x width) narrows too, keeping the hidden units with the largest L1 norm of their
fc1 row plus fc2 column.

A supernet trained with width sampling (`SuperNet.forward(widths=)`) trained its narrower networks on the *first*
channels and hidden units of every stage (`prefix_tensor`); it extracts them by that prefix instead
(`SuperNet.channel_order="prefix"`), with the same roles.
"""

from __future__ import annotations

import torch

# Roles of each tensor dimension, by parameter-name suffix: "c" = the stage's channels, "p" = the previous
# stage's channels, "h" = the block's MLP hidden units, None = unchanged. Names follow timm/EfficientViT.
BLOCK_ROLES: dict[str, tuple[str | None, ...]] = {
    "ls1.gamma": ("c",),
    "ls2.gamma": ("c",),
    "norm1.weight": ("c",),
    "norm1.bias": ("c",),
    "norm2.weight": ("c",),
    "norm2.bias": ("c",),
    "token_mixer.qkv.weight": (None, "c"),
    "token_mixer.proj.weight": ("c", None),
    "token_mixer.proj.bias": ("c",),
    "mlp.fc1.weight": ("h", "c", None, None),
    "mlp.fc1.bias": ("h",),
    "mlp.norm1.weight": ("h",),
    "mlp.norm1.bias": ("h",),
    "mlp.norm1.running_mean": ("h",),
    "mlp.norm1.running_var": ("h",),
    "mlp.fc2.weight": ("c", "h", None, None),
    "mlp.fc2.bias": ("c",),
    "mlp.norm2.weight": ("c",),
    "mlp.norm2.bias": ("c",),
    "mlp.norm2.running_mean": ("c",),
    "mlp.norm2.running_var": ("c",),
}
EMBED_ROLES: dict[str, tuple[str | None, ...]] = {
    "conv.weight": ("c", "p", None, None),
    "conv.bias": ("c",),
    "norm.weight": ("c",),
    "norm.bias": ("c",),
    "norm.running_mean": ("c",),
    "norm.running_var": ("c",),
}
STEM_ROLES: dict[str, tuple[str | None, ...]] = {
    "conv2.weight": ("c", None, None, None),
    "conv2.bias": ("c",),
    "norm2.weight": ("c",),
    "norm2.bias": ("c",),
    "norm2.running_mean": ("c",),
    "norm2.running_var": ("c",),
}
NORM_ROLES: dict[str, tuple[str | None, ...]] = {"weight": ("c",), "bias": ("c",)}  # the final LayerNorm
CLASSIFIER_ROLES: dict[str, tuple[str | None, ...]] = {"weight": (None, "c")}  # head and head_dist


def slice_tensor(t: torch.Tensor, roles: tuple[str | None, ...], index: dict[str, torch.Tensor]) -> torch.Tensor:
    for dim, role in enumerate(roles):
        if role is not None and role in index and dim < t.ndim:
            t = t.index_select(dim, index[role])
    return t


def prefix_tensor(t: torch.Tensor, roles: tuple[str | None, ...], sizes: dict[str, int]) -> torch.Tensor:
    """`t` narrowed to the first `sizes[role]` entries of every dimension with a role: a view, so that gradients and
    in-place updates (BatchNorm's running statistics) reach the full tensor. Width-sampled supernet training runs
    narrower networks on these views (`SuperNet.forward(widths=)`)."""
    for dim, role in enumerate(roles):
        if role is not None and role in sizes and dim < t.ndim:
            t = t.narrow(dim, 0, sizes[role])
    return t


def slice_state(
    state: dict[str, torch.Tensor], roles: dict[str, tuple[str | None, ...]], index: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Slice every tensor of a module's state_dict whose name has known roles; copy the rest."""
    return {k: slice_tensor(v, roles[k], index) if k in roles else v.clone() for k, v in state.items()}


def _weight_l1(t: torch.Tensor, dim: int) -> torch.Tensor:
    """L1 norm of `t` over every dim except `dim`."""
    return t.abs().transpose(0, dim).reshape(t.shape[dim], -1).sum(1)


def channel_scores(producer_weight: torch.Tensor, blocks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Per-channel L1 criterion of one stage (see the module docstring). `producer_weight` is the conv weight
    (out, in, k, k) producing the stage's channels; `blocks` the active blocks' state_dicts."""
    score = _weight_l1(producer_weight, 0)
    for b in blocks:
        for name, dim in (
            ("mlp.fc1.weight", 1),
            ("mlp.fc2.weight", 0),
            ("token_mixer.qkv.weight", 1),
            ("token_mixer.proj.weight", 0),
        ):
            if name in b:
                score = score + _weight_l1(b[name], dim)
    return score


def hidden_scores(block: dict[str, torch.Tensor]) -> torch.Tensor:
    return _weight_l1(block["mlp.fc1.weight"], 0) + _weight_l1(block["mlp.fc2.weight"], 1)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (ties broken by lower index)."""
    if k >= len(scores):
        return torch.arange(len(scores))
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:k]
    return torch.tensor(sorted(order))
