"""Test cases for layers/halo_attn.py (blocked attention with an additive bias, and the whole halo core with its
relative logits)."""
import torch

from layers.halo_attn import (
    blocked_attention, blocked_attention_reference, halo_attention, halo_attention_core, halo_attention_core_reference,
    halo_attention_reference,
)
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
        make_inputs=_inputs, layout='tokens',
    ),
]


def _core_inputs(case, dtype):
    n, blocks, block, win, d = case['n'], case['blocks'], case['block'], case['win'], case['d']
    q = torch.randn(n, blocks, block * block, d, dtype=dtype)
    k = torch.randn(n, blocks, win * win, d, dtype=dtype)
    v = torch.randn(n, blocks, win * win, case.get('dv', d), dtype=dtype)
    tables = [torch.randn(2 * win - 1, d, dtype=dtype) * d ** -0.5 for _ in range(2)]
    return [q, k, v, *tables], dict(block=block, scale=d ** -0.5, bias_scaled=case.get('bias_scaled', False))


SPECS.append(OpSpec(
    name='halo_attention_core', op=halo_attention_core, reference=halo_attention_core_reference,
    fast_impls=['sdpa', 'onehot'],
    cases=[
        dict(n=4, blocks=4, block=8, win=12, d=16),  # halonet26t: blocks of 8, halo 2
        dict(n=2, blocks=3, block=4, win=12, d=8, dv=12),  # strided queries (8 / 2) in a 12-wide window, dv != d
        dict(n=2, blocks=2, block=7, win=11, d=8, bias_scaled=True),
        dict(n=1, blocks=1, block=1, win=3, d=4),
    ],
    make_inputs=_core_inputs, layout='tokens',
))


def _map_inputs(case, dtype):
    B, heads, block, halo, d = case['B'], case['heads'], case['block'], case['halo'], case['d']
    dv = case.get('dv', d)
    nh, nw = case['grid']
    bq = block // case.get('stride', 1)
    win = block + 2 * halo
    q = torch.randn(B, heads * d, nh * bq, nw * bq, dtype=dtype)
    kv = torch.randn(B, heads * (d + dv), nh * block, nw * block, dtype=dtype)
    tables = [torch.randn(2 * win - 1, d, dtype=dtype) * d ** -0.5 for _ in range(2)]
    return [q, kv, *tables], dict(num_heads=heads, block=block, halo=halo, scale=d ** -0.5,
                                  bias_scaled=case.get('bias_scaled', False))


SPECS.append(OpSpec(
    name='halo_attention', op=halo_attention, reference=halo_attention_reference,
    fast_impls=['matmul', 'sdpa', 'onehot'],
    cases=[
        dict(B=2, heads=2, block=8, halo=2, d=8, grid=(2, 2)),  # halonet26t stage 3 at 256, narrow
        dict(B=1, heads=2, block=4, halo=1, d=4, dv=6, grid=(1, 1)),  # one block: the window is the padded map
        dict(B=2, heads=2, block=8, halo=2, d=8, dv=12, grid=(2, 2), stride=2),  # strided queries, dv != d
        dict(B=1, heads=3, block=6, halo=3, d=4, grid=(2, 3), bias_scaled=True),  # non-square grid
        dict(B=2, heads=2, block=8, halo=2, d=8, grid=(1, 1), stride=2),
    ],
    make_inputs=_map_inputs, layout='nchw',
))
