"""Benchmark cases for layers/neighborhood_attn.py: neighborhood attention."""
from typing import List

import torch

from layers import na2d, na2d_av
from . import OpCase, fwd_bwd_case


def benchmark_cases(batch_size: int = 8) -> List[OpCase]:
    """`na2d_av` at OverLoCK's ContMix shapes (xt/t at 224: 5x5 and 13x13 at /16, 5x5 and 7x7 at /32), and
    NA 7x7 (dilation 1 and 2) at a NAT-style 56x56 stage."""
    cases = []
    for groups, size, kernel, d in ((8, 14, 13, 16), (8, 14, 5, 16), (12, 7, 7, 14), (12, 7, 5, 14),
                                    (16, 7, 7, 16)):
        attn = torch.randn(batch_size, groups, size, size, kernel * kernel).softmax(-1)
        value = torch.randn(batch_size, groups, size, size, d)
        cases.append(OpCase(
            'na2d_av', f'B{batch_size} G{groups} {size}x{size} k{kernel} D{d}', impls=['reference', 'blocked'],
            run=lambda impl, a=attn, v=value, k=kernel: na2d_av(a, v, k, impl=impl)))
        cases.append(fwd_bwd_case('na2d_av', cases[-1].shape, ['reference', 'blocked'],
                                  lambda impl, a, v, k=kernel: na2d_av(a, v, k, impl=impl), (attn, value)))
    for heads, size, dilation in ((2, 56, 1), (2, 56, 2)):
        q, k, v = (torch.randn(batch_size, heads, size, size, 32) for _ in range(3))
        rpb = torch.randn(heads, 13, 13) * .02
        cases.append(OpCase(
            'na2d', f'B{batch_size} h{heads} {size}x{size} k7 d{dilation} D32', impls=['reference', 'blocked'],
            run=lambda impl, q=q, k=k, v=v, r=rpb, dil=dilation: na2d(q, k, v, 7, dil, r, impl=impl)))
        cases.append(fwd_bwd_case('na2d', cases[-1].shape, ['reference', 'blocked'],
                                  lambda impl, q, k, v, r, dil=dilation: na2d(q, k, v, 7, dil, r, impl=impl),
                                  (q, k, v, rpb)))
    return cases
