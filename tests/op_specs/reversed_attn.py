"""Test cases for layers/reversed_attn.py (DependencyViT's reversed attention and received message mass)."""
import torch

from layers.reversed_attn import reversed_attention, reversed_attention_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, n, d = case['b'], case['h'], case['n'], case['d']
    if case.get('layout') == 'strided':  # q, k, v as views into one qkv tensor, as the model produces them
        qkv = torch.randn(b, n, 3, h, d, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    # head selector (softmax over heads) times a cumulative message controller in (0, 1), as in the model
    gate = torch.randn(b, n, h, dtype=dtype).softmax(dim=-1).transpose(1, 2) * torch.rand(b, 1, n, dtype=dtype)
    return [q, k, v, gate], dict(scale=d ** -0.5)


def _call(fn):
    def call(q, k, v, gate, scale, impl=None):
        out, recv = fn(q, k, v, gate, scale) if impl is None else fn(q, k, v, gate, scale, impl=impl)
        return torch.cat([out.flatten(), recv.flatten()])
    return call


SPECS = [
    OpSpec(
        name='reversed_attention',
        op=_call(reversed_attention),
        reference=_call(reversed_attention_reference),
        fast_impls=['folded'],
        cases=[
            dict(b=2, h=12, n=196, d=16),
            dict(b=1, h=2, n=5, d=8),
            dict(b=2, h=12, n=69, d=32, layout='strided'),
            dict(b=3, h=3, n=17, d=4),
            dict(b=1, h=1, n=1, d=4),  # a single token: it is its own parent
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
