"""Test cases for layers/deform_conv.py: deformable convolution (torchvision semantics), offsets reaching past
the borders, offset groups, weight groups and the DCNv2 mask."""
import torch

from layers.deform_conv import deform_conv2d, deform_conv2d_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, c, h, w, c_out, k = case['b'], case['c'], case['h'], case['w'], case['c_out'], case['k']
    s, p, dil, g, og = case.get('s', 1), case.get('p', 0), case.get('dil', 1), case.get('groups', 1), case.get('og', 1)
    ho, wo = (h + 2 * p - dil * (k - 1) - 1) // s + 1, (w + 2 * p - dil * (k - 1) - 1) // s + 1
    x = torch.randn(b, c, h, w, dtype=dtype)
    offset = case['reach'] * torch.randn(b, 2 * og * k * k, ho, wo, dtype=dtype)
    weight = torch.randn(c_out, c // g, k, k, dtype=dtype) / (c // g * k * k) ** 0.5
    tensors = [x, offset, weight, 0.1 * torch.randn(c_out, dtype=dtype)]
    if case.get('mask'):
        tensors.append(torch.rand(b, og * k * k, ho, wo, dtype=dtype))
    return tensors, dict(stride=s, padding=p, dilation=dil)


def _call(fn):
    def call(x, offset, weight, bias, mask=None, **kwargs):
        return fn(x, offset, weight, bias, mask=mask, **kwargs)
    return call


SPECS = [
    OpSpec(
        name='deform_conv2d', op=_call(deform_conv2d), reference=_call(deform_conv2d_reference),
        fast_impls=['torchvision'],
        cases=[
            dict(b=2, c=6, h=9, w=8, c_out=12, k=2, s=2, reach=3.),  # token merging, odd side, samples off the map
            dict(b=1, c=2, h=4, w=5, c_out=3, k=2, s=2, reach=1.5),
            dict(b=2, c=4, h=7, w=6, c_out=6, k=3, s=1, p=1, groups=2, og=2, mask=True, reach=2.),
            dict(b=1, c=3, h=6, w=6, c_out=4, k=3, s=2, p=2, dil=2, reach=8.),  # dilation, far outside
            dict(b=2, c=3, h=5, w=4, c_out=2, k=1, reach=0.7),
        ],
        make_inputs=_inputs, layout='nchw',
        bfloat16_inputs=False,  # torchvision's CPU kernel has no bfloat16; autocast runs it in float32
    ),
]
