"""EfficientViT building blocks (paper Eqs. 4-5), named and laid out like timm's EfficientFormer.

The attribute names (`token_mixer`, `mlp`, `ls1`, `norm1`, `attention_biases`, ...) match
`timm.models.efficientformer`, so a timm state_dict loads into `build_model(spec)` key for key.
Two things differ from timm:

* `Attention` takes the real token-grid `resolution`; timm's is fixed at 7x7 (224 px input).
* every block has `fuse()` for deployment: BN folded into the preceding conv, LayerScale folded into
  the preceding linear/conv where that is exact, and the attention bias gathered once into a buffer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, LayerScale2d, Mlp, ndgrid, to_2tuple


# --------------------------------------------------------------------------------------------- fusion
@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, scale: torch.Tensor | None = None) -> nn.Conv2d:
    """Return one conv computing `bn(conv(x)) * scale` (eval-mode BN; `scale` is a per-channel LayerScale)."""
    w_bn = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    b = (bias - bn.running_mean) * w_bn + bn.bias
    w = conv.weight * w_bn.view(-1, 1, 1, 1)
    if scale is not None:
        w, b = w * scale.view(-1, 1, 1, 1), b * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    ).to(conv.weight.device)
    fused.weight.copy_(w)
    fused.bias.copy_(b)
    return fused


@torch.no_grad()
def scale_linear_(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """In place: `linear(x) * scale` becomes `linear(x)` (folds a LayerScale exactly)."""
    linear.weight.mul_(scale.view(-1, 1))
    if linear.bias is not None:
        linear.bias.mul_(scale)
    return linear


# --------------------------------------------------------------------------------------- stem, embed
class Stem(nn.Sequential):
    """Two 3x3 stride-2 Conv-BN-ReLU: (B, in_chs, H, W) -> (B, out_chs, H/4, W/4)."""

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int | None = None, act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        mid_chs = mid_chs or out_chs // 2
        self.add_module("conv1", nn.Conv2d(in_chs, mid_chs, kernel_size=3, stride=2, padding=1))
        self.add_module("norm1", nn.BatchNorm2d(mid_chs))
        self.add_module("act1", act_layer())
        self.add_module("conv2", nn.Conv2d(mid_chs, out_chs, kernel_size=3, stride=2, padding=1))
        self.add_module("norm2", nn.BatchNorm2d(out_chs))
        self.add_module("act2", act_layer())

    def fuse(self) -> nn.Sequential:
        return nn.Sequential(
            fuse_conv_bn(self.conv1, self.norm1), self.act1, fuse_conv_bn(self.conv2, self.norm2), self.act2
        )


class Embedding(nn.Module):
    """Per-stage patch embedding: 3x3 stride-2 Conv-BN, (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.conv, self.norm)


class Flat(nn.Module):
    """The 4D->3D reshape before the first MB3D: (B, C, H, W) -> (B, H*W, C).

    The result is made contiguous, so every block downstream sees the layout it sees anywhere else (a residual
    add's contiguous output). Without it, the first MB3D of a run (and the head) got a transposed view and paid
    for it, which a per-block latency table cannot price. In traced exports (ONNX, CoreML) it is a no-op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2).contiguous()


class Unflat(nn.Module):
    """The 3D->4D reshape after a stage that ends in MB3D but is followed by a strided-conv embedding."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C, H, W)
        # unflatten, unlike reshape(B, C, H, W), traces without shape arithmetic, which CoreML cannot convert.
        # contiguous: a transposed view would make the next strided conv emit channels-last output, and that
        # layout would then run through the whole next stage at other speeds than the latency table measured.
        return x.transpose(1, 2).unflatten(2, (self.resolution, self.resolution)).contiguous()


# ----------------------------------------------------------------------------------------------- MB4D
class Pooling(nn.Module):
    """PoolFormer token mixer: avgpool(x) - x (the residual adds x back)."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class ConvMlpWithNorm(nn.Module):
    """Conv1x1-BN-GELU-Conv1x1-BN on (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.drop(self.norm2(self.fc2(x)))

    def fuse(self, scale: torch.Tensor | None = None) -> nn.Sequential:
        """Conv-GELU-Conv with both BNs (and an optional trailing LayerScale) folded in."""
        return nn.Sequential(fuse_conv_bn(self.fc1, self.norm1), self.act, fuse_conv_bn(self.fc2, self.norm2, scale))


class MB4D(nn.Module):
    """Paper Eq. 4: x = x + Pool(x); x = x + ConvBN(GELU(ConvBN(x))), each branch LayerScaled. (B, C, H, W)."""

    def __init__(
        self,
        dim: int,
        pool_size: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-5,
        act_layer: type[nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.token_mixer = Pooling(pool_size)
        self.ls1 = LayerScale2d(dim, layer_scale_init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = ConvMlpWithNorm(dim, int(dim * mlp_ratio), act_layer)
        self.ls2 = LayerScale2d(dim, layer_scale_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        x = x + self.drop_path2(self.ls2(self.mlp(x)))
        return x

    @torch.no_grad()
    def fuse(self) -> MB4D:
        # ls1 multiplies pool(x) - x, which has no weights to fold into, so it stays.
        self.mlp = self.mlp.fuse(scale=self.ls2.gamma)
        self.ls2 = nn.Identity()
        return self


# ----------------------------------------------------------------------------------------------- MB3D
class Attention(nn.Module):
    """Multi-head self-attention with a learned relative-position bias over a `resolution` x `resolution`
    token grid (timm's EfficientFormer attention, with the grid size made a parameter)."""

    def __init__(self, dim: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4.0, resolution: int = 7):
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.qkv = nn.Linear(dim, key_dim * num_heads * 2 + self.val_attn_dim)
        self.proj = nn.Linear(self.val_attn_dim, dim)

        res = to_2tuple(resolution)
        pos = torch.stack(ndgrid(torch.arange(res[0]), torch.arange(res[1]))).flatten(1)
        rel_pos = (pos[..., :, None] - pos[..., None, :]).abs()
        rel_pos = (rel_pos[0] * res[1]) + rel_pos[1]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, res[0] * res[1]))
        self.register_buffer("attention_bias_idxs", rel_pos)
        self.register_buffer("bias_cache", None, persistent=False)  # set by fuse(): (heads, N, N)

    def attention_bias(self) -> torch.Tensor:
        if self.bias_cache is not None:
            return self.bias_cache
        return self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)  # (B, heads, N, 2k+v)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_bias()  # (B, heads, N, N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)

    @torch.no_grad()
    def fuse(self, scale: torch.Tensor | None = None) -> Attention:
        if scale is not None:
            scale_linear_(self.proj, scale)
        self.bias_cache = self.attention_biases[:, self.attention_bias_idxs].clone()
        return self


class MB3D(nn.Module):
    """Paper Eq. 5: x = x + MHSA(LN(x)); x = x + MLP(LN(x)), each branch LayerScaled. (B, N, C)."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        drop_path: float = 0.0,
        layer_scale_init: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, key_dim, num_heads, attn_ratio, resolution)
        self.ls1 = LayerScale(dim, layer_scale_init)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = LayerScale(dim, layer_scale_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x

    @torch.no_grad()
    def fuse(self) -> MB3D:
        self.token_mixer.fuse(scale=self.ls1.gamma)
        scale_linear_(self.mlp.fc2, self.ls2.gamma)
        self.ls1, self.ls2 = nn.Identity(), nn.Identity()
        return self
