"""Test cases for layers/halo_attn.py (blocked attention with an additive relative-position bias)."""
import torch

from layers import blocked_attention, blocked_attention_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    n, blocks, queries, keys, d = case['n'], case['blocks'], case['queries'], case['keys'], case['d']
    q = torch.randn(n, blocks, queries, d, dtype=dtype)
    k, v = torch.randn(n, blocks, keys, d, dtype=dtype), torch.randn(n, blocks, keys, case.get('dv', d), dtype=dtype)
    bias = torch.randn(n, blocks, queries, keys, dtype=dtype)
    return [q, k, v, bias], dict(scale=d ** -0.5, bias_scaled=case.get('bias_scaled', False))


SPECS = [
    OpSpec(
        name='blocked_attention', op=blocked_attention, reference=blocked_attention_reference, fast_impls=['sdpa'],
        cases=[
            dict(n=4, blocks=4, queries=64, keys=196, d=16),  # 8x8 blocks, halo 3
            dict(n=1, blocks=1, queries=1, keys=9, d=8),
            dict(n=2, blocks=6, queries=16, keys=64, d=8, dv=12, bias_scaled=True),
        ],
        make_inputs=_inputs,
    ),
]
