"""`EfficientViT` and `build_model(spec)`: the one builder that turns an `ArchSpec` into a network.

`layer_plan(spec)` is the single source of truth for what a network runs, in order: the model is built from it,
and the latency table prices exactly its entries (`latency_lut.spec_rows` is this plan), so the table cannot
drift from `build_model`. `EfficientViT.layer_modules()` returns the module that runs each entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models._features import feature_take_indices

from supernet.arch import ArchSpec
from supernet.blocks import MB3D, MB4D, Embedding, Flat, Stem, Unflat

BLOCKS: dict[str, type[nn.Module]] = {"4d": MB4D, "3d": MB3D}


@dataclass(frozen=True)
class Layer:
    """One entry of a network's layer plan (stage 0-based).

    kind    stem | embed | mb4d | mb3d | flat | unflat | head
    stage   the stage it belongs to (the stem to stage 0, the head and the final flatten to stage 3)
    in_width, width   input and output channels (the head's `width` is num_classes; the stem's in_width is
                      its first conv's width)
    resolution        side of the layer's *input* grid
    """

    kind: str
    stage: int
    in_width: int
    width: int
    resolution: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.kind, self.stage, self.in_width, self.width)

    def __str__(self) -> str:
        return f"{self.kind}(stage={self.stage + 1}, {self.in_width}->{self.width}, {self.resolution}px grid)"


def stage_plan(spec: ArchSpec, i: int) -> list[Layer]:
    """Stage `i`'s layers: its embedding (stages 2-4), its blocks with a `flat` before the first MB3D, an `unflat`
    closing a stage 1-3 that ends in MB3D, and in the last stage a `flat` when it ends in MB4D (the head works on
    tokens)."""
    stage, res, w = spec.stages[i], spec.stage_resolution(i), spec.stages[i].width
    last = i == len(spec.stages) - 1
    out = [Layer("embed", i, spec.widths[i - 1], w, spec.stage_resolution(i - 1))] if i > 0 else []
    for j, code in enumerate(stage.blocks):
        if code == "3d" and (j == 0 or stage.blocks[j - 1] != "3d"):
            out.append(Layer("flat", i, w, w, res))
        out.append(Layer("mb" + code, i, w, w, res))
    ends_3d = stage.num_3d > 0
    if ends_3d and not last:
        out.append(Layer("unflat", i, w, w, res))
    if last and not ends_3d:
        out.append(Layer("flat", i, w, w, res))
    return out


def layer_plan(spec: ArchSpec) -> list[Layer]:
    """Every layer `build_model(spec)` runs, in network order (a pure function of the spec).

    >>> from supernet.arch import PRESETS
    >>> [str(r) for r in layer_plan(PRESETS["l1"])][:2]
    ['stem(stage=1, 24->48, 224px grid)', 'mb4d(stage=1, 48->48, 56px grid)']
    """
    plan = [Layer("stem", 0, spec.stem_width, spec.widths[0], spec.input_size)]
    for i in range(len(spec.stages)):
        plan += stage_plan(spec, i)
    return plan + [Layer("head", 3, spec.widths[3], spec.num_classes, spec.stage_resolution(3))]


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
    """Embedding (skipped for stage 1, which the stem feeds), then the blocks, built from `stage_plan`: a `Flat`
    sits before the first MB3D, an `Unflat` closes a stage that ends in 3D but is followed by another stage, and
    the last stage ends in a `Flat` when its last block is MB4D."""

    def __init__(self, spec: ArchSpec, i: int, drop_path: list[float]):
        super().__init__()
        plan = stage_plan(spec, i)
        self.downsample = (
            Embedding(plan[0].in_width, plan[0].width) if plan and plan[0].kind == "embed" else nn.Identity()
        )
        blocks: list[nn.Module] = []
        dp = iter(drop_path)
        for layer in plan:
            if layer.kind in ("mb4d", "mb3d"):
                blocks.append(make_block(layer.kind[2:], layer.width, spec, layer.resolution, next(dp)))
            elif layer.kind == "flat":
                blocks.append(Flat())
            elif layer.kind == "unflat":
                blocks.append(Unflat(layer.resolution))
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
        # timm's feature_info: stage i's output is width_i channels at stride 4 * 2^i (a detection/segmentation neck)
        self.feature_info = [dict(num_chs=w, reduction=4 * 2**i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.apply(self._init_weights)

    def make_stage(self, i: int, in_dim: int, drop_path: list[float]) -> nn.Module:
        """Stage `i` (0-based) of the network; the supernet overrides this to build MetaPaths instead."""
        return EfficientViTStage(self.spec, i, drop_path)

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

    # ------------------------------------------------------------------ timm's model API
    def get_classifier(self) -> tuple[nn.Module, nn.Module | None]:
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier and distillation heads for `num_classes` (0: both Identity, so `forward` returns the pooled
        features, as in timm). The spec follows a positive class count, so the latency table prices the new head."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.spec = self.spec.replace(num_classes=num_classes).validate()
        for name in ("head", "head_dist"):
            head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            head.apply(self._init_weights)
            setattr(self, name, head.train(self.training))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the outputs of the stages picked by `indices` (all four by default), each NCHW at
        stride 4/8/16/32, also for stages that end in MB3D (whose tokens are reshaped to their grid). `norm` applies
        the final LayerNorm to the last stage's map. Returns the features of `forward_features` too, unless
        `intermediates_only`."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: only NCHW is supported")
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.stage_map(self.norm(x) if norm and i == last else x, i))
        if intermediates_only:
            return intermediates
        return (self.norm(x) if len(stages) == last + 1 else x), intermediates

    def stage_map(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Stage `i`'s output as an NCHW map: (B, C, H, W) as is, tokens (B, N, C) reshaped to the stage's grid."""
        if x.ndim == 4:
            return x
        r = self.spec.stage_resolution(i)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], r, r)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # the last stage ends on tokens: (B, N, C)
        return self.norm(x)

    def layer_modules(self) -> list[nn.Module]:
        """The module running each entry of `layer_plan(self.spec)`, in order; applying them in turn computes
        `forward`. The latency table times exactly these modules (after `fuse()`)."""
        mods: list[nn.Module] = [self.stem]
        for i, stage in enumerate(self.stages):
            mods += ([stage.downsample] if i > 0 else []) + list(stage.blocks)
        return mods + [NetworkHead(self)]

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
        if isinstance(self.head_dist, nn.Linear):
            self.head.weight.add_(self.head_dist.weight).mul_(0.5)
            self.head.bias.add_(self.head_dist.bias).mul_(0.5)
        self.head_dist = None
        return self


class NetworkHead(nn.Module):
    """A view of a network's head as one module: final LayerNorm on tokens, mean pool, classifier(s).
    (B, N, C) -> (B, num_classes). It holds the network's own `norm` and classifiers (shared, not copied) and
    nothing else, so what it owns is what it runs (the latency table counts a row's weights from its module), and
    runs the network's `forward_head` on them."""

    def __init__(self, net: EfficientViT):
        super().__init__()
        self.norm, self.head_drop, self.head, self.head_dist = net.norm, net.head_drop, net.head, net.head_dist
        self.distilled_training = net.distilled_training
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return EfficientViT.forward_head(self, self.norm(x))  # type: ignore[arg-type]  # the attributes it reads


def build_model(spec: ArchSpec) -> EfficientViT:
    """The concrete network for `spec` (validated first)."""
    return EfficientViT(spec)
