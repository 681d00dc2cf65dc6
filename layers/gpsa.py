"""Gated positional self-attention (GPSA, ConViT).

Layout: q, k, v (B, heads, N, d); N = H * W patch tokens in row-major order (no class token).

    A = (1 - sigmoid(g_h)) * softmax(q k^T * scale) + sigmoid(g_h) * softmax(P_h),    out = (A / rowsum(A)) v
P_h (N, N) are positional logits, the per-head projection of the relative offsets (dx, dy, dx^2 + dy^2)
(key minus query; dx the column offset), independent of the input. Both softmaxes are row-stochastic, so the
renormalisation is the identity in exact arithmetic (the official code does it anyway; the reference keeps it).

Implementations:
- `reference`: the official computation with both N x N matrices per image.
- `sdpa`: (1 - s) * scaled_dot_product_attention(q, k, v) + s * (softmax(P) @ v): the content attention is fused
  and the positional matrix is computed once per forward for the whole batch.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._shape_cache import shape_cache
from .attention import sdpa_backward_not_preferred
from .config import ImplTable, resolve_impl

__all__ = ['GatedPositionalAttention', 'gated_positional_attention', 'gated_positional_attention_reference',
           'gated_positional_attention_sdpa', 'relative_offsets_2d']


def _offsets_uncached(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    rows, cols = rows.flatten(), cols.flatten()
    dx = (cols[None, :] - cols[:, None]).to(torch.float64)  # key minus query
    dy = (rows[None, :] - rows[:, None]).to(torch.float64)
    return torch.stack([dx, dy, dx * dx + dy * dy], dim=-1).to(device=device, dtype=dtype)


_offsets = shape_cache(maxsize=16)(_offsets_uncached)


def relative_offsets_2d(h: int, w: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, N, 3) table of (dx, dy, dx^2 + dy^2), key minus query, for an h x w grid (cached)."""
    return _offsets(h, w, torch.device(device or 'cpu'), dtype)


def gated_positional_attention_reference(q, k, v, pos_logits, gate, scale: float) -> torch.Tensor:
    """pos_logits (heads, N, N), gate (heads,) raw gating parameters; see the module docstring."""
    content = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
    positional = pos_logits.softmax(dim=-1)[None]
    sigma = torch.sigmoid(gate).view(1, -1, 1, 1)
    attn = (1. - sigma) * content + sigma * positional
    attn = attn / attn.sum(dim=-1, keepdim=True)
    return attn @ v


def gated_positional_attention_sdpa(q, k, v, pos_logits, gate, scale: float) -> torch.Tensor:
    sigma = torch.sigmoid(gate).view(1, -1, 1, 1)
    content = F.scaled_dot_product_attention(q, k, v, scale=scale)
    positional = pos_logits.softmax(dim=-1)[None] @ v
    return (1. - sigma) * content + sigma * positional


_IMPLS: ImplTable = {
    'sdpa': (gated_positional_attention_sdpa, sdpa_backward_not_preferred),
    'reference': (gated_positional_attention_reference, None),
}


def gated_positional_attention(q, k, v, pos_logits, gate, scale: float, impl: Optional[str] = None) -> torch.Tensor:
    """GPSA core; `impl` selects the kernel."""
    return resolve_impl('gated_positional_attention', _IMPLS, impl, q, k, v)(q, k, v, pos_logits, gate, scale)


class GatedPositionalAttention(nn.Module):
    """ConViT's GPSA with its official parameter names (`qk`, `v`, `proj`, `pos_proj`, `gating_param`).

    Args:
        dim: channels. num_heads: heads. qkv_bias: bias on qk/v (ConViT: False).
        locality_strength: strength of the convolution-like positional init.
    """
    kernel_impl: Optional[str]  # for TorchScript, which would type an attribute holding None as NoneType

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0., locality_strength: float = 1., kernel_impl: Optional[str] = None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.kernel_impl = kernel_impl
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)  # NOTE: official layout; applied by neither path at p=0
        self.proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, num_heads)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.locality_strength = locality_strength

    @torch.no_grad()
    def local_init(self) -> None:
        """Heads start as a k x k convolution: head (h1, h2) peaks at offset (h2 - c, h1 - c), v = identity."""
        self.v.weight.copy_(torch.eye(self.v.weight.shape[0]))
        k = int(self.num_heads ** .5)
        center = (k - 1) / 2 if k % 2 == 0 else k // 2
        for h1 in range(k):
            for h2 in range(k):
                p = h1 + k * h2
                self.pos_proj.weight[p, 0] = 2 * (h2 - center) * self.locality_strength
                self.pos_proj.weight[p, 1] = 2 * (h1 - center) * self.locality_strength
                self.pos_proj.weight[p, 2] = -1 * self.locality_strength
        self.pos_proj.bias.zero_()
        self.gating_param.fill_(1.)

    def forward(self, x: torch.Tensor, grid_size: Tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if torch.jit.is_scripting():
            # TorchScript compiles neither the shape cache nor the dispatcher: the table is rebuilt per call and the
            # kernel is fixed when the module is scripted (`reference` if it was built with that, else `sdpa`)
            offsets = _offsets_uncached(grid_size[0], grid_size[1], x.device, x.dtype)
            pos_logits = self.pos_proj(offsets).permute(2, 0, 1)
            impl = self.kernel_impl
            if impl is not None and impl == 'reference':
                out = gated_positional_attention_reference(q, k, v, pos_logits, self.gating_param, self.scale)
            else:
                out = gated_positional_attention_sdpa(q, k, v, pos_logits, self.gating_param, self.scale)
        else:
            offsets = relative_offsets_2d(*grid_size, device=x.device, dtype=x.dtype)
            pos_logits = self.pos_proj(offsets).permute(2, 0, 1)  # (heads, N, N)
            out = gated_positional_attention(q, k, v, pos_logits, self.gating_param, self.scale,
                                             impl=self.kernel_impl)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
