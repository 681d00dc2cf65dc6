"""Benchmark cases for layers/linear_attn.py: linear attention (MALA and plain)."""
from typing import List

import torch

from layers import linear_attention, rope_2d, softmax_attention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """MALA's stage shapes (fast vs reference), then linear-time MALA and plain linear attention vs softmax attention
    (SDPA), all with 2-D RoPE, at growing token counts (14^2 .. 112^2: where the linear form starts to win)."""
    cases = []
    for dim, heads, size in ((64, 1, 56), (128, 2, 28)):
        d = dim // heads
        q, k, v = (torch.randn(batch_size, heads, size * size, d) for _ in range(3))
        rope = rope_2d(size, size, d)
        cases.append(OpCase(
            'linear_attention (MALA)', f'B{batch_size} h{heads} N{size * size} d{d}', impls=['reference', 'linear'],
            run=lambda impl, q=q, k=k, v=v, s=d ** -0.5, r=rope: linear_attention(q, k, v, s, r, impl=impl)))
        cases.append(fwd_bwd_case(
            'linear_attention (MALA)', cases[-1].shape, ['reference', 'linear'],
            lambda impl, q, k, v, s=d ** -0.5, r=rope: linear_attention(q, k, v, s, r, impl=impl), (q, k, v)))
    for size in (14, 28, 56, 112):
        q, k, v = (torch.randn(1, 2, size * size, 64) for _ in range(3))
        rope = rope_2d(size, size, 64)

        def run(impl, q=q, k=k, v=v, r=rope):
            if impl == 'softmax (sdpa)':
                return softmax_attention(q, k, v, 0.125, r, impl='sdpa')
            return linear_attention(q, k, v, 0.125, r, magnitude_aware=impl.startswith('MALA'), impl='linear')
        cases.append(OpCase('MALA vs softmax', f'B1 h2 N{size * size} d64', run=run, same_result=False,
                            impls=['softmax (sdpa)', 'MALA (linear)', 'plain linear (linear)']))
    return cases
