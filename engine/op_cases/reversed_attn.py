"""Benchmark cases for layers/reversed_attn.py: reversed attention."""
from typing import List

import torch

from layers import reversed_attention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """DependencyViT-Tiny/Small attention (12 heads of 16/32 channels) at 196 tokens, and the Lite token counts
    after each pruning (164, 132, 100, 69)."""
    cases = []
    for dim, heads, tokens in ((192, 12, 196), (192, 12, 164), (192, 12, 132), (192, 12, 100), (192, 12, 69),
                               (384, 12, 196)):
        d = dim // heads
        q, k, v = (torch.randn(batch_size, heads, tokens, d) for _ in range(3))
        gate = torch.rand(batch_size, heads, tokens)
        cases.append(OpCase(
            'reversed_attention', f'B{batch_size} h{heads} N{tokens} d{d}', impls=['reference', 'folded'],
            run=lambda impl, q=q, k=k, v=v, g=gate, s=d ** -0.5: torch.cat(
                [t.flatten() for t in reversed_attention(q, k, v, g, s, impl=impl)])))
        if tokens in (196, 100):
            cases.append(fwd_bwd_case(
                'reversed_attention', cases[-1].shape, ['reference', 'folded'],
                lambda impl, q, k, v, g, s=d ** -0.5: torch.cat(
                    [t.flatten() for t in reversed_attention(q, k, v, g, s, impl=impl)]), (q, k, v, gate)))
    return cases
