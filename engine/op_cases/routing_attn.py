"""Benchmark cases for layers/routing_attn.py: bi-level routing attention."""
from typing import List

import torch

from layers import BiLevelRoutingAttention, KernelUnavailableError, routed_attention
from . import OpCase, fwd_bwd_case


def _masked_runs(q, k, v, topk, heads, scale) -> bool:
    """Whether the `masked` implementation runs at this shape (it needs dense enough routing); tried on one image."""
    try:
        routed_attention(q[:1], k[:1], v[:1], topk, heads, scale, impl='masked')
    except KernelUnavailableError:
        return False
    return True


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """The routing-attention core (forward, and forward+backward as in training) and the whole BRA layer at
    BiFormer-T/S and -B stage shapes (224 input). The reference is the official gather (see the module docstring)."""
    cases = []
    for dim, heads, size, topk in ((64, 2, 56, 1), (128, 4, 28, 4), (256, 8, 14, 16),
                                   (96, 3, 56, 1), (192, 6, 28, 4), (384, 12, 14, 16)):
        P, w2, scale = 49, (size // 7) ** 2, dim ** -0.5
        q, k, v = torch.randn(batch_size, P, w2, 3 * dim).split(dim, dim=-1)
        impls = ['reference', 'sdpa'] + (['masked'] if _masked_runs(q, k, v, topk, heads, scale) else [])
        shape = f'B{batch_size} C{dim} h{heads} {size}x{size} S7 topk{topk}'
        cases.append(OpCase('routed_attention', shape, impls=impls,
                            run=lambda impl, q=q, k=k, v=v, t=topk, h=heads, s=scale: routed_attention(
                                q, k, v, t, h, s, impl=impl)))
        cases.append(fwd_bwd_case('routed_attention', shape, impls,
                                  lambda impl, q, k, v, t=topk, h=heads, s=scale: routed_attention(
                                      q, k, v, t, h, s, impl=impl), (q, k, v)))
        layer = BiLevelRoutingAttention(dim, heads, n_win=7, topk=topk).eval()
        x = torch.randn(batch_size, size, size, dim)

        def run_layer(impl, layer=layer, x=x):
            layer.kernel_impl = impl
            return layer(x)
        cases.append(OpCase('bi_level_routing_attention', shape, impls=['reference', 'auto'], run=run_layer))
    return cases
