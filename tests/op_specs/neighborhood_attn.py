"""Test cases for layers/neighborhood_attn.py (NATTEN border semantics; small maps, several kernels/dilations)."""
import torch

from layers.neighborhood_attn import _HAS_NATTEN, na2d, na2d_av, na2d_av_reference, na2d_reference
from op_harness import OpSpec

# (B, G, H, W, D, kernel, dilation): borders shift the windows; maps from exactly K * d to several tiles
_CASES = [
    dict(b=2, g=2, h=9, w=11, d=3, k=3, dil=1),
    dict(b=1, g=2, h=6, w=7, d=2, k=3, dil=2),  # small: gradcheck case; sub-grids of 3 and 4
    dict(b=1, g=1, h=14, w=14, d=4, k=13, dil=1),  # OverLoCK stage 3: one dense tile
    dict(b=2, g=3, h=20, w=17, d=4, k=5, dil=1),  # several 4 x 4 tiles, the last ones overlapping
    dict(b=1, g=2, h=13, w=10, d=3, k=3, dil=3),  # non-divisible sub-grids
    dict(b=1, g=1, h=12, w=9, d=2, k=3, dil=(4, 3)),  # map exactly K * d: every sub-grid has K points
    dict(b=1, g=2, h=7, w=7, d=3, k=7, dil=1),  # kernel = map: every window is the whole map
    dict(b=1, g=1, h=21, w=16, d=2, k=(5, 3), dil=(2, 1)),  # rectangular kernel
]


def _k2(case):
    k = case['k']
    return (k, k) if isinstance(k, int) else k


def _av_inputs(case, dtype):
    kh, kw = _k2(case)
    attn = torch.randn(case['b'], case['g'], case['h'], case['w'], kh * kw, dtype=dtype).softmax(-1)
    value = torch.randn(case['b'], case['g'], case['h'], case['w'], case['d'], dtype=dtype)
    return [attn, value], dict(kernel_size=case['k'], dilation=case['dil'])


def _na_inputs(case, dtype):
    kh, kw = _k2(case)
    q, k, v = (torch.randn(case['b'], case['g'], case['h'], case['w'], case['d'], dtype=dtype) for _ in range(3))
    rpb = torch.randn(case['g'], 2 * kh - 1, 2 * kw - 1, dtype=dtype) * .5
    return [q, k, v, rpb], dict(kernel_size=case['k'], dilation=case['dil'])


def _na_call(fn):
    def call(q, k, v, rpb, kernel_size, dilation, **kwargs):
        return fn(q, k, v, kernel_size, dilation, rpb, **kwargs)
    return call


SPECS = [
    OpSpec(name='na2d_av', op=na2d_av, reference=na2d_av_reference,
           fast_impls=['blocked'] + (['natten'] if _HAS_NATTEN else []), cases=_CASES, make_inputs=_av_inputs,
           layout='tokens'),
    OpSpec(name='na2d', op=_na_call(na2d), reference=_na_call(na2d_reference), fast_impls=['blocked'],
           cases=_CASES, make_inputs=_na_inputs, layout='tokens'),
]
