"""Benchmark cases for layers/token_prune.py: attention with the class-attention score."""
from typing import List

import torch

from layers import attention_with_cls_score
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """Attention with the class score at DeiT-Tiny/Small shapes: all 197 tokens and after pruning (~70%, ~34%)."""
    cases = []
    for dim, heads in ((192, 3), (384, 6)):
        for tokens in (197, 138, 68):
            d = dim // heads
            q, k, v = (torch.randn(batch_size, heads, tokens, d) for _ in range(3))
            cases.append(OpCase(
                'attention_with_cls_score', f'B{batch_size} h{heads} N{tokens} d{d}', impls=['reference', 'sdpa'],
                run=lambda impl, q=q, k=k, v=v, s=d ** -0.5: attention_with_cls_score(q, k, v, s, impl=impl)[0]))
            cases.append(fwd_bwd_case(
                'attention_with_cls_score', cases[-1].shape, ['reference', 'sdpa'],
                lambda impl, q, k, v, s=d ** -0.5: torch.cat(
                    [t.flatten() for t in attention_with_cls_score(q, k, v, s, impl=impl)]), (q, k, v)))
    return cases
