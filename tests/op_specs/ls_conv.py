"""Test cases for layers/ls_conv.py (small-kernel aggregation)."""
import torch

from layers.ls_conv import ska, ska_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, c, g, h, w, k = case['b'], case['c'], case['g'], case['h'], case['w'], case.get('k', 3)
    x = torch.randn(b, c, h, w, dtype=dtype)
    if case.get('layout') == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    elif case.get('layout') == 'strided':
        x = torch.randn(b, c, h, 2 * w, dtype=dtype)[..., ::2]
    weight = torch.randn(b, g, k * k, h, w, dtype=dtype)
    return [x, weight], {}


SPECS = [
    OpSpec(
        name='ska', op=ska, reference=ska_reference, fast_impls=['shift'],
        cases=[
            dict(b=2, c=16, g=2, h=9, w=9),
            dict(b=1, c=8, g=1, h=5, w=7),  # one weight group shared by all channels
            dict(b=2, c=12, g=12, h=4, w=3),  # a group per channel
            dict(b=1, c=8, g=4, h=1, w=1),  # a single pixel: only the centre tap sees data
            dict(b=2, c=16, g=2, h=6, w=5, k=5),
            dict(b=2, c=16, g=2, h=7, w=6, layout='channels_last'),
            dict(b=1, c=8, g=2, h=6, w=6, layout='strided'),
        ],
        make_inputs=_inputs, layout='nchw',
    ),
]
