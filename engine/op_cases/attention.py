"""Benchmark cases for layers/attention.py: softmax attention."""
import math
from typing import List

import torch

from layers import softmax_attention
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """The attention core of FMViT's multi-rate attention at its stage shapes (224 input, head dim 32): queries of
    the whole map against keys pooled at each of the stage's two rates."""
    cases = []
    for heads, size, rates in ((2, 28, (4, 8)), (4, 14, (2, 4)), (8, 7, (1, 2))):
        for rate in rates:
            kv_len = math.ceil(size / rate) ** 2
            q = torch.randn(batch_size, heads, size * size, 32)
            k, v = (torch.randn(batch_size, heads, kv_len, 32) for _ in range(2))
            cases.append(OpCase('multi-rate attention core (FMViT)', f'B{batch_size} h{heads} N{size * size} '
                                f'-> {kv_len} (rate {rate}) d32', impls=['reference', 'sdpa'],
                                run=lambda impl, q=q, k=k, v=v: softmax_attention(q, k, v, 32 ** -0.5, impl=impl)))
            cases.append(fwd_bwd_case('multi-rate attention core (FMViT)', cases[-1].shape, ['reference', 'sdpa'],
                                      lambda impl, q, k, v: softmax_attention(q, k, v, 32 ** -0.5, impl=impl),
                                      (q, k, v)))
    return cases
