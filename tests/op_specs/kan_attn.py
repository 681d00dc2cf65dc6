"""Test cases for layers/kan_attn.py (Fourier-KArAt: the per-row reference vs the vectorised form)."""
import torch

from layers.kan_attn import FourierKArAt, fourier_kan_attention, fourier_kan_attention_reference
from op_harness import OpSpec


def _inputs(case, dtype):
    b, h, n, d, r, g = case['b'], case['h'], case['n'], case['d'], case['r'], case['g']
    if case.get('layout') == 'strided':  # views into one qkv tensor, as KArAtAttention produces them
        qkv = torch.randn(b, n, 3, h, d, dtype=dtype).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
    else:
        q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    act = FourierKArAt(h, n, r, g, case['base_act']).to(dtype)
    with torch.no_grad():  # scale weights away from their init value of one, so w_s is really exercised
        act.scale_weight.add_(0.3 * torch.randn_like(act.scale_weight))
    params = [p.detach() for p in (act.coef, act.base_weight, act.scale_weight, act.proj_weight)]
    return [q, k, v, *params], dict(scale=d ** -0.5, base_act=case['base_act'])


SPECS = [
    OpSpec(
        name='fourier_kan_attention', op=fourier_kan_attention, reference=fourier_kan_attention_reference,
        fast_impls=['vectorized', 'dense'],
        cases=[
            dict(b=2, h=3, n=17, d=8, r=5, g=3, base_act='zero'),
            dict(b=1, h=2, n=5, d=4, r=3, g=2, base_act='silu'),  # small: the gradcheck case
            dict(b=2, h=2, n=9, d=8, r=12, g=1, base_act='identity'),
            dict(b=2, h=3, n=11, d=8, r=4, g=3, base_act='zero', layout='strided'),
            dict(b=1, h=1, n=1, d=4, r=2, g=2, base_act='silu'),  # a single token
            dict(b=1, h=2, n=197, d=16, r=12, g=3, base_act='zero'),  # ViT's 197 tokens, the published r and G
        ],
        make_inputs=_inputs, layout='tokens',
    ),
]
