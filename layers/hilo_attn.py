"""HiLo attention (LITv2): high-frequency heads attend inside local windows, low-frequency heads attend to
average-pooled keys/values.

Layout: x is a (B, H, W, C) map (NHWC) at the module edge; attention cores use (batch, heads, tokens, d).

With head_dim d, scale s = d^-0.5 (both branches), window / pool size ws, and the map zero-padded at the
right/bottom to multiples of ws (Hp x Wp; the official dense-prediction backbone's rule, identical to the
classification model whenever ws divides H and W):
- Hi-Fi (`hifi` = (qkv_weight, qkv_bias, proj_weight, proj_bias), h heads): the padded map is cut into
  non-overlapping ws x ws windows (row-major windows, row-major tokens inside a window); per window
  q|k|v = x W_qkv^T + b with channel order (3, h, d); out = softmax(q k^T s) v; then proj. Padded zeros are
  ordinary keys (their k and v are the biases): there is no mask, as in the official code.
- Lo-Fi (`lofi` = (q_weight, q_bias, kv_weight, kv_bias, proj_weight, proj_bias), l heads): every query of
  the padded map attends to the tokens of AvgPool2d(ws, ws)(x) (pooled on the input, then projected by
  W_kv with channel order (2, l, d); ws = 1 means no pooling: plain global multi-head attention); then proj.
- Output: cat([Hi-Fi, Lo-Fi], channels), cropped to H x W. No joint output projection.
Either branch may be None (alpha = 0: windows only; alpha = 1 or ws = 1: pooled/global only), so the operator
also serves as plain window attention and as pooled-KV (PVT-style average-pool) attention.

Implementations of `hilo_attention`:
- `reference`: the official computation: partition x into windows, then project; pool x, then project;
  explicit matmul + softmax + matmul.
- `sdpa`: q|k|v of the Hi-Fi heads and q of the Lo-Fi heads come from one GEMM over the map (a linear layer
  commutes with the window partition, so only the projected Hi-Fi q|k|v are rearranged into windows); both
  attention cores are `F.scaled_dot_product_attention` calls. At 224 input the projections, not the small
  attention cores, dominate the layer's time, so the gain is small there and grows with the map (384 input);
  docs/operators.md, HiLo attention, has the figures.

`HiLoAttention` holds the official parameter names (`h_qkv`, `h_proj`, `l_q`, `l_kv`, `l_proj`) and its head
split: l = int(num_heads * alpha) Lo-Fi heads, the rest Hi-Fi; window size 1 puts every head in Lo-Fi.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ImplTable, NotPreferred, grad_required, resolve_impl

__all__ = ['HiLoAttention', 'hilo_attention', 'hilo_attention_reference', 'hilo_attention_sdpa', 'hilo_head_split']

HiFiParams = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]
LoFiParams = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], torch.Tensor,
                   Optional[torch.Tensor]]


def hilo_head_split(num_heads: int, alpha: float, window_size: int) -> Tuple[int, int]:
    """(Hi-Fi heads, Lo-Fi heads): int(num_heads * alpha) Lo-Fi heads (Python truncation, as the official
    code); a window of 1 makes every head Lo-Fi (plain global attention)."""
    if window_size == 1:
        return 0, num_heads
    lo = int(num_heads * alpha)
    return num_heads - lo, lo


def _check_args(x: torch.Tensor, hifi, lofi, head_dim: int, window_size: int) -> None:
    if x.ndim != 4:
        raise ValueError(f'hilo_attention expects x of shape (B, H, W, C), got {tuple(x.shape)}')
    if hifi is None and lofi is None:
        raise ValueError('hilo_attention needs at least one of the Hi-Fi and Lo-Fi branches')
    if window_size < 1:
        raise ValueError(f'hilo_attention needs a window size >= 1, got {window_size}')
    for name, params, proj in (('Hi-Fi', hifi, 2), ('Lo-Fi', lofi, 4)):
        if params is not None and params[proj].shape[0] % head_dim:
            raise ValueError(
                f'{name} projection width {params[proj].shape[0]} is not a multiple of head_dim {head_dim}')


def _pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the right/bottom to multiples of the window."""
    pad_r, pad_b = -x.shape[2] % window_size, -x.shape[1] % window_size
    if pad_r or pad_b:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/ws * W/ws, ws * ws, C): row-major windows, row-major tokens inside."""
    B, H, W, C = x.shape
    return x.reshape(B, H // ws, ws, W // ws, ws, C).transpose(2, 3).reshape(B, -1, ws * ws, C)


def _window_reverse(x: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """(B, H/ws * W/ws, ws * ws, C) -> (B, H, W, C)."""
    B, C = x.shape[0], x.shape[-1]
    return x.reshape(B, H // ws, W // ws, ws, ws, C).transpose(2, 3).reshape(B, H, W, C)


def _hifi_reference(x: torch.Tensor, params: HiFiParams, head_dim: int, ws: int, scale: float) -> torch.Tensor:
    qkv_weight, qkv_bias, proj_weight, proj_bias = params
    B, H, W, C = x.shape
    heads = proj_weight.shape[0] // head_dim
    windows = _window_partition(x, ws)  # (B, nW, ws^2, C)
    qkv = F.linear(windows, qkv_weight, qkv_bias).reshape(B, windows.shape[1], ws * ws, 3, heads, head_dim)
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, heads, ws^2, d)
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    out = (attn @ v).transpose(2, 3).reshape(B, -1, ws * ws, heads * head_dim)
    return F.linear(_window_reverse(out, ws, H, W), proj_weight, proj_bias)


def _lofi_reference(x: torch.Tensor, params: LoFiParams, head_dim: int, ws: int, scale: float) -> torch.Tensor:
    q_weight, q_bias, kv_weight, kv_bias, proj_weight, proj_bias = params
    B, H, W, C = x.shape
    heads = proj_weight.shape[0] // head_dim
    q = F.linear(x, q_weight, q_bias).reshape(B, H * W, heads, head_dim).transpose(1, 2)
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), ws, ws).flatten(2).transpose(1, 2) if ws > 1 else x.reshape(B, -1, C)
    k, v = F.linear(pooled, kv_weight, kv_bias).reshape(B, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, H, W, heads * head_dim)
    return F.linear(out, proj_weight, proj_bias)


def hilo_attention_reference(
        x: torch.Tensor,
        hifi: Optional[HiFiParams],
        lofi: Optional[LoFiParams],
        head_dim: int,
        window_size: int,
        scale: Optional[float] = None,
) -> torch.Tensor:
    """HiLo attention as the official code computes it (see the module docstring).

    Args:
        x: (B, H, W, C) input map (any H, W: zero-padded to multiples of `window_size`, output cropped).
        hifi: (qkv_weight (3 h d, C), qkv_bias or None, proj_weight (h d, h d), proj_bias or None), or None.
        lofi: (q_weight (l d, C), q_bias, kv_weight (2 l d, C), kv_bias, proj_weight (l d, l d), proj_bias), or None.
        head_dim: channels per head, d. window_size: Hi-Fi window side and Lo-Fi pooling size.
        scale: logit scale (default d^-0.5).

    Returns:
        (B, H, W, h d + l d): Hi-Fi channels first.
    """
    _check_args(x, hifi, lofi, head_dim, window_size)
    scale = head_dim ** -0.5 if scale is None else scale
    H, W = x.shape[1:3]
    x = _pad_to_window(x, window_size)
    outs = []
    if hifi is not None:
        outs.append(_hifi_reference(x, hifi, head_dim, window_size, scale))
    if lofi is not None:
        outs.append(_lofi_reference(x, lofi, head_dim, window_size, scale))
    out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return out[:, :H, :W]


def _cat_optional_bias(weights: Sequence[torch.Tensor], biases: Sequence[Optional[torch.Tensor]]):
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])


def hilo_attention_sdpa(
        x: torch.Tensor,
        hifi: Optional[HiFiParams],
        lofi: Optional[LoFiParams],
        head_dim: int,
        window_size: int,
        scale: Optional[float] = None,
) -> torch.Tensor:
    """Same result as the reference: one input GEMM for Hi-Fi q|k|v and Lo-Fi q, two fused attention calls."""
    _check_args(x, hifi, lofi, head_dim, window_size)
    scale = head_dim ** -0.5 if scale is None else scale
    ws = window_size
    H, W = x.shape[1:3]
    x = _pad_to_window(x, ws)
    B, Hp, Wp, C = x.shape
    h_dim = 0 if hifi is None else hifi[2].shape[0]
    l_dim = 0 if lofi is None else lofi[4].shape[0]
    # one GEMM for every projection of the full-resolution map
    weights = ([hifi[0]] if hifi is not None else []) + ([lofi[0]] if lofi is not None else [])
    biases = ([hifi[1]] if hifi is not None else []) + ([lofi[1]] if lofi is not None else [])
    if len(weights) > 1:
        proj_in = F.linear(x, torch.cat(weights), _cat_optional_bias(weights, biases))
    else:
        proj_in = F.linear(x, weights[0], biases[0])
    outs = []
    if hifi is not None:
        heads = h_dim // head_dim
        qkv = proj_in[..., :3 * h_dim]
        # (B, Hp, Wp, 3 h d) -> (3, B * nW, heads, ws^2, d): the only copy of the Hi-Fi branch
        qkv = qkv.reshape(B, Hp // ws, ws, Wp // ws, ws, 3, heads, head_dim)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, heads, ws * ws, head_dim)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=scale)
        out = out.reshape(B, Hp // ws, Wp // ws, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        outs.append(F.linear(out.reshape(B, Hp, Wp, h_dim), hifi[2], hifi[3]))
    if lofi is not None:
        _, _, kv_weight, kv_bias, proj_weight, proj_bias = lofi
        heads = l_dim // head_dim
        q = proj_in[..., 3 * h_dim:].reshape(B, Hp * Wp, heads, head_dim).transpose(1, 2)
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), ws, ws).permute(0, 2, 3, 1) if ws > 1 else x
        kv = F.linear(pooled.reshape(B, -1, C), kv_weight, kv_bias).reshape(B, -1, 2, heads, head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=scale)
        outs.append(F.linear(out.transpose(1, 2).reshape(B, Hp, Wp, l_dim), proj_weight, proj_bias))
    out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return out[:, :H, :W]


def _can_use_sdpa(x: torch.Tensor, hifi: Optional[HiFiParams], lofi: Optional[LoFiParams]) -> Optional[str]:
    if x.device.type == 'cpu' and hifi is not None and grad_required(x, *hifi, *(lofi or ())):
        # the fused 2 x 2-token windows lose in the backward: 0.86x the reference's training step at LITv2-S/B's
        # 14 x 14 stage (docs/speed.md, training step); the global (window 1) stage keeps sdpa (1.05x)
        return NotPreferred('training step with Hi-Fi windows: the reference\'s backward is faster on the CPU')
    return None


_IMPLS: ImplTable = {
    'sdpa': (hilo_attention_sdpa, _can_use_sdpa),
    'reference': (hilo_attention_reference, None),
}


def hilo_attention(
        x: torch.Tensor,
        hifi: Optional[HiFiParams],
        lofi: Optional[LoFiParams],
        head_dim: int,
        window_size: int,
        scale: Optional[float] = None,
        impl: Optional[str] = None,
) -> torch.Tensor:
    """HiLo attention on a (B, H, W, C) map; `impl` selects the kernel (see the module docstring)."""
    fn = resolve_impl('hilo_attention', _IMPLS, impl, x, hifi, lofi)
    return fn(x, hifi, lofi, head_dim, window_size, scale)


class HiLoAttention(nn.Module):
    """LITv2's HiLo attention layer on (B, H, W, C) maps.

    Args:
        dim: channels (in and out).
        num_heads: heads in total, head_dim = dim // num_heads.
        window_size: Hi-Fi window and Lo-Fi pooling size (1: plain global attention with the Lo-Fi parameters).
        alpha: fraction of Lo-Fi heads (int(num_heads * alpha), truncated).
        qkv_bias: bias on h_qkv, l_q, l_kv.
        qk_scale: logit scale (default head_dim^-0.5).
        kernel_impl: implementation (None: process-wide setting, see layers.config).
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 2, alpha: float = 0.5,
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, kernel_impl: Optional[str] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'HiLoAttention: dim {dim} is not divisible by num_heads {num_heads}')
        self.dim, self.head_dim, self.window_size = dim, dim // num_heads, window_size
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_impl = kernel_impl
        self.h_heads, self.l_heads = hilo_head_split(num_heads, alpha, window_size)
        self.h_dim, self.l_dim = self.h_heads * self.head_dim, self.l_heads * self.head_dim
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        hifi = lofi = None
        if self.h_heads > 0:
            hifi = (self.h_qkv.weight, self.h_qkv.bias, self.h_proj.weight, self.h_proj.bias)
        if self.l_heads > 0:
            lofi = (self.l_q.weight, self.l_q.bias, self.l_kv.weight, self.l_kv.bias, self.l_proj.weight,
                    self.l_proj.bias)
        return hilo_attention(x, hifi, lofi, self.head_dim, self.window_size, self.scale, impl=self.kernel_impl)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, hi_heads={self.h_heads}, lo_heads={self.l_heads}, window_size={self.window_size}'
