"""Test cases for layers/dynamic_conv.py (ContMix)."""
import torch

from layers.dynamic_conv import contmix, contmix_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, cq, cv, g, h, w, ks, pool = case['b'], case['cq'], case['cv'], case['g'], case['h'], case['w'], case['ks'], \
        case.get('pool', 3)
    taps = sum(k * k for k in ks)
    tensors = [
        torch.randn(b, cq, h, w, dtype=dtype) * .5,
        torch.randn(b, cq, pool, pool, dtype=dtype) * .5,
        torch.randn(b, cv, h, w, dtype=dtype),
        torch.randn(taps, pool * pool, 1, 1, dtype=dtype) / pool,
        torch.randn(taps, dtype=dtype) * .1,
    ] + [torch.randn(g, 2 * k - 1, 2 * k - 1, dtype=dtype) * .2 for k in ks]
    return tensors, dict(kernel_sizes=ks, num_groups=g)


def _call(fn):
    def call(query, key, value, proj_weight, proj_bias, *rpbs, kernel_sizes, num_groups, **kwargs):
        return fn(query, key, value, proj_weight, proj_bias, rpbs, kernel_sizes, num_groups, **kwargs)
    return call


SPECS = [
    OpSpec(
        name='contmix', op=_call(contmix), reference=_call(contmix_reference), fast_impls=['blocked'],
        cases=[
            dict(b=2, cq=8, cv=16, g=4, h=9, w=9, ks=(5, 7)),
            dict(b=1, cq=4, cv=8, g=2, h=5, w=6, ks=(3, 5), pool=2),  # small: gradcheck case
            dict(b=1, cq=16, cv=16, g=8, h=14, w=14, ks=(5, 13), pool=7),  # OverLoCK-XT stage 3 layout
            dict(b=2, cq=6, cv=12, g=3, h=7, w=11, ks=(5, 7)),
            dict(b=1, cq=4, cv=12, g=2, h=17, w=13, ks=(3, 5, 7)),  # three kernel sizes, tiled windows
        ],
        make_inputs=_inputs, layout='nchw',
    ),
]
