"""Multi-rate spatial-reduction attention: queries at full resolution, keys and values from the map average-pooled
at several rates, one rate per group of heads (FMViT's RLMHSA, as reconstructed in backbones/fmvit.py).

For a map x: (B, C, H, W) and rates (r_1, ..., r_m), the heads are split into m equal groups; group j attends from
every position to the ceil(H / r_j) x ceil(W / r_j) tokens of avg_pool(x, r_j) (windows cut by the border average
the pixels they hold), so each group sees the map low-pass filtered at its own cut-off frequency (r = 1: the full
map). All projections are 1x1 Conv-BN (`ConvNorm`), which fold into plain convolutions for deployment; pooling
first and projecting after is exact in eval mode (a 1x1 conv commutes with averaging) and r_j^2 times cheaper.

The attention core is `layers.softmax_attention` (reference: explicit softmax(q k^T) v; sdpa: PyTorch's fused
kernel), run once per rate group: (B, heads_j, H*W, d) queries against (B, heads_j, H*W / r_j^2, d) keys.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conv_norm import ConvNorm
from .attention import softmax_attention

__all__ = ['MultiRateAttention', 'pool_tokens']


def pool_tokens(x: torch.Tensor, rate: int) -> torch.Tensor:
    """Average-pool (B, C, H, W) by `rate` (ceil mode: border windows average what they cover); rate 1 is x."""
    if rate == 1:
        return x
    return F.avg_pool2d(x, rate, rate, ceil_mode=True, count_include_pad=False)


class MultiRateAttention(nn.Module):
    """Heads grouped by key/value pooling rate; 1x1 Conv-BN q, kv (one per rate) and output projections.

    Args:
        dim: input channels.
        out_dim: attention width (heads * head_dim) and output channels.
        head_dim: channels per head.
        rates: key/value pooling rate of each head group; the heads divide evenly among them.
        proj: end with a 1x1 Conv-BN output projection (False when the caller's next layer is a 1x1 conv anyway).
        kernel_impl: implementation of the attention core (None: the process-wide setting).
    """

    def __init__(self, dim: int, out_dim: int, head_dim: int = 32, rates: Sequence[int] = (1, 2),
                 proj: bool = True, kernel_impl: Optional[str] = None):
        super().__init__()
        num_heads = out_dim // head_dim
        if out_dim % head_dim or num_heads % len(rates):
            raise ValueError(f'MultiRateAttention: out_dim {out_dim} must be head_dim {head_dim} x a multiple of '
                             f'the {len(rates)} rates {tuple(rates)}')
        self.rates = tuple(rates)
        self.head_dim = head_dim
        self.group_heads = num_heads // len(rates)
        self.scale = head_dim ** -0.5
        self.kernel_impl = kernel_impl
        group_dim = self.group_heads * head_dim
        self.q = ConvNorm(dim, out_dim)
        self.kv = nn.ModuleList([ConvNorm(dim, 2 * group_dim) for _ in rates])
        self.proj = ConvNorm(out_dim, out_dim) if proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        heads, d = self.group_heads, self.head_dim
        q = self.q(x).reshape(B, len(self.rates), heads, d, H * W).transpose(-2, -1)
        outs = []
        for j, (rate, kv) in enumerate(zip(self.rates, self.kv)):
            k, v = kv(pool_tokens(x, rate)).flatten(2).reshape(B, 2, heads, d, -1).transpose(-2, -1).unbind(1)
            outs.append(softmax_attention(q[:, j], k, v, self.scale, impl=self.kernel_impl))
        out = torch.stack(outs, dim=1)  # (B, rates, heads, H*W, d)
        return self.proj(out.transpose(-2, -1).reshape(B, -1, H, W))
