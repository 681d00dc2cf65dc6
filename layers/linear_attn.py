"""Linear attention: plain kernelised and magnitude-aware (MALA), with 2-D rotary position embedding.

Layout: q, k, v are (B, heads, N, d), N = H * W tokens in row-major order.

With phi(x) = elu(x) + 1 (strictly positive), scale s and the rotary embedding R applied to phi(q), phi(k):
- plain (kernelised) linear attention:  out_i = sum_j (R phi(q_i) . R phi(k_j)) v_j / (phi(q_i) . sum_j phi(k_j) + eps)
- magnitude-aware (MALA, Fan et al., ICCV 2025), as the official code computes it:
      z_i   = s * phi(q_i) . mean_j phi(k_j)                          (before rotation)
      out_i = (s / N) * (1 + 1 / (z_i + eps)) * sum_j (R phi(q_i) . R phi(k_j)) v_j  -  z_i * mean_j v_j
  Without rotation a query's weights sum to one; the official code rotates after computing z, so they do not
  exactly (its issue #5); this module follows the code, which the checkpoints were trained with.

Implementations:
- `reference`: the explicit N x N weight matrix, then weights @ v (quadratic; the definition).
- `linear`: associativity, sum_j k_j v_j^T first: a d x d matrix per head, linear in N.

Softmax attention with the same rotary embedding (MALA's stages 3-4) is `layers.attention.softmax_attention`.

2-D rotary embedding (`rope_2d`): angles 1 / 10000 ** linspace(0, 1, d // 4), each repeated twice; the first
d / 2 channels rotate with the row index, the last d / 2 with the column index; channel pairs (2i, 2i + 1)
rotate together: R x = x * cos + (-x_{2i+1}, x_{2i}) * sin.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._shape_cache import shape_cache
from .config import ImplTable, resolve_impl

__all__ = ['apply_rope', 'linear_attention', 'linear_attention_linear', 'linear_attention_reference', 'rope_2d']


@shape_cache(maxsize=64)
def _rope_tables(h: int, w: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype):
    # NOTE: angles rounded to float32, as the official model stores them in a float32 buffer at construction
    angle = (1.0 / (base ** torch.linspace(0, 1, head_dim // 4))).double().repeat_interleave(2)
    rows = torch.arange(h, dtype=torch.float64)[:, None] * angle  # (h, d/2)
    cols = torch.arange(w, dtype=torch.float64)[:, None] * angle  # (w, d/2)
    theta = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    theta = theta.reshape(h * w, -1)
    return theta.sin().to(device=device, dtype=dtype), theta.cos().to(device=device, dtype=dtype)


def rope_2d(h: int, w: int, head_dim: int, base: float = 10000., device=None,
            dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """sin, cos tables of shape (h * w, head_dim) for the 2-D rotary embedding (cached per shape/device)."""
    if head_dim % 4:
        raise ValueError(f'2-D rotary embedding needs head_dim divisible by 4, got {head_dim}')
    return _rope_tables(h, w, head_dim, base, torch.device(device or 'cpu'), dtype)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i + 1) of x (..., N, d) by the angles in sin/cos (N, d)."""
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def _phi(q, k):
    return F.elu(q) + 1, F.elu(k) + 1


def linear_attention_reference(q, k, v, scale: float, rope=None, magnitude_aware: bool = True,
                               eps: float = 1e-6) -> torch.Tensor:
    """Explicit N x N weights (see the module docstring); q, k, v (B, heads, N, d) before phi."""
    q, k = _phi(q, k)
    n = q.shape[-2]
    q_r, k_r = (q, k) if rope is None else (apply_rope(q, *rope), apply_rope(k, *rope))
    dots = q_r @ k_r.transpose(-2, -1)  # (B, h, N, N)
    if magnitude_aware:
        z = (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1)) * scale  # (B, h, N, 1)
        weights = dots * (scale / n) * (1 + 1 / (z + eps)) - z / n
    else:
        weights = dots / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + eps)
    return weights @ v


def linear_attention_linear(q, k, v, scale: float, rope=None, magnitude_aware: bool = True,
                            eps: float = 1e-6) -> torch.Tensor:
    """Linear-time form: k^T v (d x d) first; the official MALA operation order."""
    q, k = _phi(q, k)
    n = q.shape[-2]
    q_r, k_r = (q, k) if rope is None else (apply_rope(q, *rope), apply_rope(k, *rope))
    if magnitude_aware:
        z = (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1)) * scale
        factor = (scale / n) ** 0.5
        kv = (k_r.transpose(-2, -1) * factor) @ (v * factor)
        return (q_r @ kv) * (1 + 1 / (z + eps)) - z * v.mean(dim=-2, keepdim=True)
    kv = k_r.transpose(-2, -1) @ v
    return (q_r @ kv) / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + eps)


_LINEAR_IMPLS: ImplTable = {
    'linear': (linear_attention_linear, None),
    'reference': (linear_attention_reference, None),
}


def linear_attention(q, k, v, scale: float, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                     magnitude_aware: bool = True, eps: float = 1e-6, impl: Optional[str] = None) -> torch.Tensor:
    """Kernelised linear attention (MALA when `magnitude_aware`); `impl` selects the kernel."""
    # FLOPs are the linear form's: the quadratic reference is a definition, not the model's work
    fn = resolve_impl('linear_attention', _LINEAR_IMPLS, impl, q, k, v, flops_impl='linear')
    return fn(q, k, v, scale, rope, magnitude_aware, eps)
