"""`EfficientViT` and `build_model(spec)`: the one builder that turns an `ArchSpec` into a network."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates, trunc_normal_

from nas.arch import ArchSpec, StageSpec
from supernet.blocks import MB3D, MB4D, Embedding, Flat, Stem, Unflat

BLOCKS: dict[str, type[nn.Module]] = {"4d": MB4D, "3d": MB3D}


def make_block(code: str, dim: int, spec: ArchSpec, resolution: int, drop_path: float = 0.0) -> nn.Module:
    """One block from its code, through the `BLOCKS` registry."""
    kw = dict(mlp_ratio=spec.mlp_ratio, drop_path=drop_path, layer_scale_init=spec.layer_scale_init)
    if code == "4d":
        kw.update(pool_size=spec.pool_size)
    else:
        a = spec.attention
        kw.update(resolution=resolution, key_dim=a.key_dim, num_heads=a.num_heads, attn_ratio=a.attn_ratio)
    return BLOCKS[code](dim, **kw)


class EfficientViTStage(nn.Module):
    """Embedding (skipped for stage 1, which the stem feeds), then the blocks. A `Flat` module sits before
    the first MB3D and an `Unflat` closes a stage that ends in 3D but is followed by another stage."""

    def __init__(
        self,
        in_dim: int,
        stage: StageSpec,
        spec: ArchSpec,
        resolution: int,
        downsample: bool,
        unflat: bool,
        drop_path: list[float],
    ):
        super().__init__()
        self.downsample = Embedding(in_dim, stage.width) if downsample else nn.Identity()
        blocks: list[nn.Module] = []
        for j, code in enumerate(stage.blocks):
            if code == "3d" and (j == 0 or stage.blocks[j - 1] != "3d"):
                blocks.append(Flat())
            blocks.append(make_block(code, stage.width, spec, resolution, drop_path[j]))
        if unflat and stage.num_3d:
            blocks.append(Unflat(resolution))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class EfficientViT(nn.Module):
    """Stem -> 4 stages -> final LayerNorm on tokens -> mean pool -> classifier + distillation head.

    The module tree mirrors `timm.models.efficientformer.EfficientFormer`, so for timm-compatible specs
    the state_dicts are interchangeable without any key map.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.num_classes = spec.num_classes
        widths = spec.widths
        self.stem = Stem(spec.in_chans, widths[0], spec.stem_width)
        dpr = calculate_drop_path_rates(spec.drop_path_rate, list(spec.depths), stagewise=True)
        prev = [widths[0]] + list(widths[:-1])
        self.stages = nn.Sequential(*(self.make_stage(i, prev[i], dpr[i]) for i in range(len(spec.stages))))
        self.num_features = widths[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(self.num_features, spec.num_classes)
        self.head_dist: nn.Linear | None = nn.Linear(self.num_features, spec.num_classes)
        self.distilled_training = False  # True: training returns (cls_logits, dist_logits) for DeiT-style distillation
        self.apply(self._init_weights)

    def make_stage(self, i: int, in_dim: int, drop_path: list[float]) -> nn.Module:
        """Stage `i` (0-based) of the network; the supernet overrides this to build MetaPaths instead."""
        spec = self.spec
        last = i == len(spec.stages) - 1
        return EfficientViTStage(in_dim, spec.stages[i], spec, spec.stage_resolution(i), i > 0, not last, drop_path)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {k for k, _ in self.named_parameters() if "attention_biases" in k}

    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        if x.ndim == 4:  # the last stage ended in MB4D: (B, C, H, W) -> (B, N, C)
            x = x.flatten(2).transpose(1, 2)
        return self.norm(x)  # (B, N, C)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self.head_drop(x.mean(dim=1))  # (B, C)
        if pre_logits:
            return x
        if self.head_dist is None:  # fused: the two heads were merged into one
            return self.head(x)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def fuse(self) -> EfficientViT:
        """Deploy mode, in place: fold every BN into its conv, fold LayerScale into the preceding linear/conv
        where exact, cache attention biases, and merge the classifier and distillation heads (their
        inference output is their mean). Call on an eval-mode model; training afterwards is not supported."""
        self.eval()
        self.stem = self.stem.fuse()
        for stage in self.stages:
            if isinstance(stage.downsample, Embedding):
                stage.downsample = stage.downsample.fuse()
            for block in stage.blocks:
                if isinstance(block, (MB4D, MB3D)):
                    block.fuse()
        if self.head_dist is not None:
            self.head.weight.add_(self.head_dist.weight).mul_(0.5)
            self.head.bias.add_(self.head_dist.bias).mul_(0.5)
            self.head_dist = None
        return self


def build_model(spec: ArchSpec) -> EfficientViT:
    """The concrete network for `spec` (validated first)."""
    return EfficientViT(spec)
