"""Benchmark cases for layers/gpsa.py: gated positional self-attention."""
from typing import List

import torch

from layers import gated_positional_attention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """GPSA at ConViT-Ti/S/B shapes (196 tokens)."""
    cases = []
    for heads in (4, 9, 16):
        q, k, v = (torch.randn(batch_size, heads, 196, 48) for _ in range(3))
        pos, gate = torch.randn(heads, 196, 196), torch.randn(heads)
        cases.append(OpCase('gated_positional_attention', f'B{batch_size} h{heads} N196 d48',
                            impls=['reference', 'sdpa'],
                            run=lambda impl, q=q, k=k, v=v, p=pos, g=gate: gated_positional_attention(
                                q, k, v, p, g, 48 ** -0.5, impl=impl)))
        cases.append(fwd_bwd_case('gated_positional_attention', cases[-1].shape, ['reference', 'sdpa'],
                                  lambda impl, *t: gated_positional_attention(*t, 48 ** -0.5, impl=impl),
                                  (q, k, v, pos, gate)))
    return cases
