"""Benchmark cases for layers/kan_attn.py: Fourier-KArAt."""
from typing import List

import torch
import torch.nn.functional as F

from layers import FourierKArAt
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """Fourier-KArAt at the ViT-Tiny/Small/Base stage shapes (N = 197, d = 64, r = 12, published G), fast vs
    reference, then each against softmax attention (SDPA) at the same shape."""
    cases = []
    for name, heads, grid in (('Ti G3', 3, 3), ('S G3', 6, 3), ('B G1', 12, 1)):
        q, k, v = (torch.randn(batch_size, heads, 197, 64) for _ in range(3))
        act = FourierKArAt(heads, 197, 12, grid).eval()
        shape = f'{name}: B{batch_size} h{heads} N197 d64 r12 G{grid}'

        def run(impl, q=q, k=k, v=v, act=act):
            act.kernel_impl = impl
            return act(q, k, v, 0.125)
        cases.append(OpCase('fourier_kan_attention', shape, impls=['reference', 'dense', 'vectorized'], run=run))
        cases.append(fwd_bwd_case('fourier_kan_attention', shape, ['reference', 'dense', 'vectorized'],
                                  lambda impl, q, k, v, run=run: run(impl, q=q, k=k, v=v), (q, k, v), act))

        def run_vs(impl, q=q, k=k, v=v, act=act):
            if impl == 'softmax (sdpa)':
                return F.scaled_dot_product_attention(q, k, v, scale=0.125)
            act.kernel_impl = 'vectorized'
            return act(q, k, v, 0.125)
        cases.append(OpCase('KArAt vs softmax', shape, impls=['softmax (sdpa)', 'Fourier-KArAt (vectorized)'],
                            run=run_vs, same_result=False))
    return cases
