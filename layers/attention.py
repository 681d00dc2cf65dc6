"""Softmax attention: scaled-dot-product attention with an optional 2-D rotary embedding on q and k.

Used by MALA's stages 3-4 (with RoPE), BiFormer's stage 4 and FMViT's multi-rate attention core (queries of the
whole map against pooled keys). Layout: q (B, heads, N, d), k and v (B, heads, M, d); rope, when given, is the
(sin, cos) pair of `layers.linear_attn.rope_2d` and needs M == N.

    out = softmax(scale * R q . R k) v

Implementations: `reference` (the explicit N x M score matrix, softmax, then @ v: the definition) and `sdpa`
(PyTorch's `scaled_dot_product_attention`).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .config import ImplTable, NotPreferred, grad_required, resolve_impl
from .linear_attn import apply_rope

__all__ = ['softmax_attention', 'softmax_attention_reference', 'softmax_attention_sdpa']


def softmax_attention_reference(q, k, v, scale: float, rope=None) -> torch.Tensor:
    """softmax(s * R q . R k) v with the explicit N x M score matrix."""
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return torch.softmax(scale * q @ k.transpose(-2, -1), dim=-1) @ v


def softmax_attention_sdpa(q, k, v, scale: float, rope=None) -> torch.Tensor:
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


# 'auto' skips sdpa below 196 x 196 scores per head on the CPU: PyTorch's fused kernel only pays once a head's score
# matrix is large, and the explicit form is faster on the smaller ones (7 x 7 stages, pooled keys); see
# docs/operators.md, softmax attention.
_SDPA_MIN_SCORES_CPU = 196 * 196
# In a training step the fused kernel's backward is slower than autograd through the explicit form unless a head has
# at least 784 x 196 scores and 196 keys (measured: 0.56-0.85x at 49 x 49 .. 196 x 196 and at 49 keys, 1.08x at
# 784 x 196, 2x at 784 x 784; docs/speed.md, training step).
_SDPA_MIN_SCORES_CPU_TRAIN = 784 * 196
_SDPA_MIN_KEYS_CPU_TRAIN = 196


def _slow_sdpa_backward(n: int, m: int) -> Optional[NotPreferred]:
    if n * m < _SDPA_MIN_SCORES_CPU_TRAIN or m < _SDPA_MIN_KEYS_CPU_TRAIN:
        return NotPreferred(f'training step with {n} x {m} scores per head: the explicit form\'s backward is faster '
                            'on the CPU')
    return None


def sdpa_backward_not_preferred(q: torch.Tensor, k: torch.Tensor, *others) -> Optional[NotPreferred]:
    """A `NotPreferred` reason when this is a CPU training step at a shape where the fused attention's backward
    loses to the explicit form's (see above), else None. Shared by every operator whose fast form is SDPA."""
    if q.device.type != 'cpu' or not grad_required(q, k, *others):
        return None
    return _slow_sdpa_backward(q.shape[-2], k.shape[-2])


def _can_use_sdpa(q, k, v) -> Optional[str]:
    if q.device.type != 'cpu':
        return None
    if grad_required(q, k, v):
        return _slow_sdpa_backward(q.shape[-2], k.shape[-2])
    if q.shape[-2] * k.shape[-2] < _SDPA_MIN_SCORES_CPU:
        return NotPreferred(f'{q.shape[-2]} x {k.shape[-2]} scores per head: the explicit form is faster on the CPU')
    return None


_SOFTMAX_IMPLS: ImplTable = {
    'sdpa': (softmax_attention_sdpa, _can_use_sdpa),
    'reference': (softmax_attention_reference, None),
}


def softmax_attention(q, k, v, scale: float, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                      impl: Optional[str] = None) -> torch.Tensor:
    """Scaled-dot-product attention with optional rotary embedding; `impl` selects the kernel."""
    fn = resolve_impl('softmax_attention', _SOFTMAX_IMPLS, impl, q, k, v)
    return fn(q, k, v, scale, rope)
