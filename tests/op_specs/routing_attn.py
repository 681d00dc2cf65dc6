"""Test cases for layers/routing_attn.py (bi-level routing attention core on region-major tokens)."""
import torch

from layers.routing_attn import routed_attention, routed_attention_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    n, S, rh, rw, cq, cv = case['n'], case['S'], case['rh'], case['rw'], case['cq'], case['cv']
    P, w2 = S * S, rh * rw
    if case.get('ties'):
        # every region holds the same q and k tokens, so all region logits tie exactly; v differs per region, so a
        # different choice among the tied regions would change the output
        q = torch.randn(n, 1, w2, cq, dtype=dtype).expand(n, P, w2, cq)
        k = torch.randn(n, 1, w2, cq, dtype=dtype).expand(n, P, w2, cq)
        v = torch.randn(n, P, w2, cv, dtype=dtype)
    elif case.get('layout') == 'strided':
        # slices of one projection output, as the module passes them
        qkv = torch.randn(n, P, w2, 2 * cq + cv, dtype=dtype)
        q, k, v = qkv.split([cq, cq, cv], dim=-1)
    else:
        q, k, v = (torch.randn(n, P, w2, c, dtype=dtype) for c in (cq, cq, cv))
    kwargs = dict(topk=case['topk'], num_heads=case['heads'], scale=cq ** -0.5)
    if case.get('padded'):
        # the NCHW form: q, k, v zero-padded after the projection; the routing averages the real tokens only
        sizes = torch.randint(1, w2 + 1, (P,))
        real = (torch.arange(w2)[None, :] < sizes[:, None])[None, :, :, None]
        q, k, v = (t * real for t in (q, k, v))
        kwargs.update(route_scale=1.0, region_sizes=sizes)
    return [q, k, v], kwargs


_SHARED_CASES = [
    dict(n=2, S=7, rh=2, rw=2, cq=32, cv=32, heads=4, topk=16),  # BiFormer stage 3 (14x14 map), reduced widths
    dict(n=1, S=2, rh=3, rw=2, cq=8, cv=12, heads=2, topk=2),  # batch 1, odd region, v wider than q/k
    dict(n=2, S=3, rh=3, rw=5, cq=12, cv=6, heads=3, topk=3, layout='strided'),
    dict(n=2, S=4, rh=2, rw=3, cq=8, cv=8, heads=1, topk=4, ties=True),
]

SPECS = [
    OpSpec(
        name='routed_attention', op=routed_attention, reference=routed_attention_reference, fast_impls=['sdpa'],
        cases=_SHARED_CASES + [
            dict(n=2, S=7, rh=8, rw=8, cq=16, cv=16, heads=2, topk=1),  # stage 1 (56x56 map): one region routed
            dict(n=2, S=7, rh=4, rw=4, cq=16, cv=16, heads=4, topk=4),  # stage 2 (28x28)
            dict(n=1, S=5, rh=1, rw=1, cq=4, cv=4, heads=2, topk=25),  # one token per region, every region routed
            dict(n=1, S=7, rh=2, rw=2, cq=8, cv=8, heads=1, topk=1, ties=True),
            dict(n=2, S=4, rh=3, rw=3, cq=8, cv=8, heads=2, topk=3, padded=True),
        ],
        make_inputs=_inputs, layout='tokens',
    ),
    # `masked` only runs where at least a quarter of the regions are routed
    OpSpec(
        name='routed_attention[masked]', op=routed_attention, reference=routed_attention_reference,
        fast_impls=['masked'], cases=_SHARED_CASES, make_inputs=_inputs, layout='tokens',
    ),
]
