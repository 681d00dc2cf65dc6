"""Reversed attention (DependencyViT, Ding et al., CVPR 2023): children send their values to their parents.

Layout: q, k, v are (B, heads, N, d); `gate` is (B, heads, N), the per-child, per-head sending weight
(DependencyViT: head selector P[c, h] times cumulative message controller M[c]).

With the ordinary forward attention, normalised over parents p for every child c,
    A_F[h, c, p] = softmax_p(q_c . k_p * scale),
the reversed attention and its outputs are
    A_R[h, p, c] = A_F[h, c, p] * gate[h, c]          (parent p receives from child c; rows NOT normalised)
    out[h, p]    = sum_c A_R[h, p, c] v[h, c]          (B, heads, N, d)
    recv[p]      = sum_h sum_c A_R[h, p, c]            (B, N): message mass a token receives; low = leaf
    mask[p, c]   = sum_h A_R[h, p, c]                  (B, N, N): the soft dependency (parent-child) mask

Implementations of `reversed_attention(q, k, v, gate, scale) -> (out, recv)`:
- `reference`: the definition: A_F, then A_R materialised (N x N per head, transposed and gated), then A_R @ v
  and the sums.
- `folded`: never forms A_R. The gate scales the values (N x d instead of N x N), the scale is folded into q,
  and the gate is appended to the values as one more column, so one matmul A_F^T @ [gate * v, gate] gives the
  output and, in its last column, the per-head received mass. SDPA cannot be used: it only computes A_F @ v,
  and the reversed product needs A_F^T @ v.

`dependency_mask(q, k, gate, scale)` returns the soft mask (B, N_parent, N_child); it is an analysis output
(the dependency tree), not on the logits path, so it has a single (reference) form.
"""
from typing import Optional, Tuple

import torch

from .config import ImplTable, resolve_impl

__all__ = ['dependency_mask', 'reversed_attention', 'reversed_attention_folded', 'reversed_attention_reference']


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'reversed_attention expects q, k, v as (B, heads, N, d) with equal B, heads, N; '
                         f'got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    if gate.shape != q.shape[:3]:
        raise ValueError(f'reversed_attention expects gate as (B, heads, N) = {tuple(q.shape[:3])}, '
                         f'got {tuple(gate.shape)}')


def reversed_attention_reference(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gate: torch.Tensor,
        scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The definition (module docstring): returns out (B, heads, N, d) and recv (B, N)."""
    _check(q, k, v, gate)
    forward_attn = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)  # (B, h, child, parent)
    reversed_attn = forward_attn.transpose(-2, -1) * gate[:, :, None, :]  # (B, h, parent, child)
    out = reversed_attn @ v
    recv = reversed_attn.sum(dim=(1, 3))
    return out, recv


def reversed_attention_folded(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gate: torch.Tensor,
        scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A_F^T @ [gate * v, gate]: the gate on the values, the received mass as an extra value column."""
    _check(q, k, v, gate)
    forward_attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    gate = gate.unsqueeze(-1)
    values = torch.cat([v * gate, gate], dim=-1)
    out = forward_attn.transpose(-2, -1) @ values
    return out[..., :-1], out[..., -1].sum(dim=1)


_IMPLS: ImplTable = {
    'folded': (reversed_attention_folded, None),
    'reference': (reversed_attention_reference, None),
}


def reversed_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gate: torch.Tensor,
        scale: float,
        impl: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reversed attention output (B, heads, N, d) and received message mass (B, N); `impl` selects the kernel."""
    fn = resolve_impl('reversed_attention', _IMPLS, impl, q, k, v, gate, scale)
    return fn(q, k, v, gate, scale)


def dependency_mask(q: torch.Tensor, k: torch.Tensor, gate: torch.Tensor, scale: float) -> torch.Tensor:
    """Soft dependency mask sum_h A_R[h, p, c], (B, N_parent, N_child); column c is child c's parent weights."""
    _check(q, k, k, gate)
    forward_attn = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)
    return (forward_attn * gate[..., None]).sum(dim=1).transpose(-2, -1)
