"""KArAt specifics: the operator against the published formula, low-rank shapes and counts, sharing that really
shares, the ViT around it equal to timm's, softmax-ViT checkpoints, FLOPs by the hand count."""
import math

import pytest
import timm
import torch

from backbones._helpers import CheckpointMismatchError
from engine.profile import count_flops
from layers import FourierKArAt, fourier_kan_attention
from layers.kan_attn import fourier_kan_attention_reference

VARIANTS = {  # name: (timm softmax ViT it extends, heads, G, universal)
    'karat_vit_tiny_g3b': ('vit_tiny_patch16_224', 3, 3, False),
    'karat_vit_tiny_g3u': ('vit_tiny_patch16_224', 3, 3, True),
    'karat_vit_small_g3b': ('vit_small_patch16_224', 6, 3, False),
    'karat_vit_small_g3u': ('vit_small_patch16_224', 6, 3, True),
    'karat_vit_base_g1b': ('vit_base_patch16_224', 12, 1, False),
    'karat_vit_base_g1u': ('vit_base_patch16_224', 12, 1, True),
}
R, N = 12, 197


def _meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def _small(name, **kwargs):
    """A 3-block model on 48 x 48 inputs (N = 10 tokens), float64."""
    return timm.create_model(name, img_size=48, depth=3, **kwargs).double().eval()


def _operators(model):
    return [m for m in model.modules() if isinstance(m, FourierKArAt)]


def test_operator_equals_the_published_formula_scalar_by_scalar():
    """sigma(a)_j = sum_p W[j, p] sum_q (w_b b(a_q) + w_s sum_m (a_pqm cos(m a_q) + b_pqm sin(m a_q))), with plain
    Python loops over every scalar, against the reference and the fast implementations."""
    torch.manual_seed(0)
    b, h, n, d, r, g = 1, 2, 4, 3, 2, 2
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    act = FourierKArAt(h, n, r, g, base_act='silu').double()
    with torch.no_grad():
        act.scale_weight.uniform_(0.5, 1.5)
    c, wb, ws, W = act.coef, act.base_weight, act.scale_weight, act.proj_weight
    expected = torch.zeros(b, h, n, d, dtype=torch.float64)
    for head in range(h):
        scores = (q[0, head] @ k[0, head].T) / math.sqrt(d)
        for row in range(n):
            hidden = []
            for p in range(r):
                total = 0.
                for col in range(n):
                    x = scores[row, col].item()
                    fourier = sum(c[head, p, col, m - 1].item() * math.cos(m * x)
                                  + c[head, p, col, g + m - 1].item() * math.sin(m * x) for m in range(1, g + 1))
                    total += wb[head, p, col].item() * x / (1 + math.exp(-x)) + ws[head, p, col].item() * fourier
                hidden.append(total)
            for j in range(n):
                weight = sum(W[head, j, p].item() * hidden[p] for p in range(r))
                expected[0, head, row] += weight * v[0, head, j]
    args = (q, k, v, c, wb, ws, W, d ** -0.5, 'silu')
    with torch.no_grad():
        torch.testing.assert_close(fourier_kan_attention_reference(*args), expected, rtol=0, atol=1e-12)
        for impl in ('vectorized', 'dense'):
            torch.testing.assert_close(fourier_kan_attention(*args, impl=impl), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('impl', ['reference', 'vectorized', 'dense'])
def test_attention_dropout_drops_the_same_weights_in_every_implementation(impl):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64) for _ in range(3))
    act = FourierKArAt(2, 6, 3, 2).double()
    no_drop = act(q, k, v, 0.5)
    torch.manual_seed(1)
    expected = fourier_kan_attention_reference(q, k, v, act.coef, act.base_weight, act.scale_weight,
                                               act.proj_weight, 0.5, dropout_p=0.5)
    torch.manual_seed(1)
    act.kernel_impl = impl
    out = act(q, k, v, 0.5, dropout_p=0.5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(out, no_drop)


def test_operator_rejects_another_token_count():
    act = FourierKArAt(3, 197, 12, 3)
    q = torch.randn(1, 3, 50, 8)
    for impl in ('reference', 'vectorized', 'dense'):
        act.kernel_impl = impl
        with pytest.raises(ValueError, match='built for 3 heads and N=197 tokens, got 3 heads and N=50'):
            act(q, q, q, 0.3)
    with pytest.raises(ValueError, match='base_act'):
        FourierKArAt(3, 197, base_act='relu')


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_low_rank_shapes_and_exact_extra_parameters(name):
    vit_name, heads, grid, universal = VARIANTS[name]
    model = _meta(name)
    ops = _operators(model)
    assert len(ops) == (1 if universal else 12)
    for op in ops:
        assert op.coef.shape == (heads, R, N, 2 * grid)
        assert op.base_weight.shape == op.scale_weight.shape == (heads, R, N)
        assert op.proj_weight.shape == (heads, N, R)
        assert sum(p.numel() for p in op.parameters()) == heads * R * N * (2 * grid + 3)
    # everything else is timm's softmax ViT of the same size
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in _meta(vit_name).parameters())
    assert extra == len(ops) * heads * R * N * (2 * grid + 3)


def test_universal_mode_stores_one_operator_once_and_blockwise_one_per_block():
    universal, blockwise = _meta('karat_vit_tiny_g3u'), _meta('karat_vit_tiny_g3b')
    u_keys = [k for k in universal.state_dict() if '.act.' in k or k.startswith('attn_act.')]
    assert u_keys == ['attn_act.coef', 'attn_act.base_weight', 'attn_act.scale_weight', 'attn_act.proj_weight']
    assert all(block.attn.act is None for block in universal.blocks)
    b_ops = [block.attn.act for block in blockwise.blocks]
    assert blockwise.attn_act is None and len({id(op.coef) for op in b_ops}) == 12
    assert all(f'blocks.{j}.attn.act.coef' in blockwise.state_dict() for j in range(12))


def test_universal_equals_blockwise_with_copies_and_collects_every_blocks_gradient():
    """U with a shared operator == B with that operator copied into every block; the shared parameters'
    gradient is the sum of the per-block gradients of B (so every block really uses the one operator)."""
    universal = _small('karat_vit_tiny_g3u')
    blockwise = _small('karat_vit_tiny_g3b')
    state = {k: v for k, v in universal.state_dict().items() if not k.startswith('attn_act.')}
    for j in range(3):
        state.update({f'blocks.{j}.attn.act.{k}': v for k, v in universal.attn_act.state_dict().items()})
    blockwise.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    out_u, out_b = universal(x), blockwise(x)
    torch.testing.assert_close(out_u, out_b, rtol=0, atol=1e-12)
    out_u.sum().backward()
    out_b.sum().backward()
    for pname, param in universal.attn_act.named_parameters():
        per_block = [getattr(block.attn.act, pname).grad for block in blockwise.blocks]
        assert all(g.abs().sum() > 0 for g in per_block) or pname == 'base_weight'
        torch.testing.assert_close(param.grad, sum(per_block), rtol=0, atol=1e-10)
    # the zero base activation multiplies w_b by zero: a zero gradient, as the formula gives
    assert universal.attn_act.base_weight.grad.abs().max() == 0


def test_model_implementations_agree():
    model = _small('karat_vit_small_g3b')
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    outs = []
    for impl in ('reference', 'vectorized', 'dense'):
        for op in _operators(model):
            op.kernel_impl = impl
        outs.append(model(x))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-10)


def test_softmax_mode_is_timms_vit():
    """Around the operator the model is timm's ViT: in softmax mode it holds and reproduces vit_tiny_patch16_224."""
    theirs = timm.create_model('vit_tiny_patch16_224', depth=3).eval()
    ours = timm.create_model('karat_vit_tiny_g3b', attn_act='softmax', depth=3).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_softmax_vit_checkpoint_loads_with_operators_at_init():
    vit = timm.create_model('vit_tiny_patch16_224', img_size=48, depth=3)
    torch.manual_seed(5)
    fresh = timm.create_model('karat_vit_tiny_g3u', img_size=48, depth=3)
    torch.manual_seed(5)
    model = timm.create_model('karat_vit_tiny_g3u', img_size=48, depth=3, pretrained=True,
                              pretrained_cfg_overlay=dict(state_dict=vit.state_dict()))
    for key, value in model.state_dict().items():
        source = fresh.state_dict()[key] if key.startswith('attn_act.') else vit.state_dict()[key]
        torch.testing.assert_close(value, source, rtol=0, atol=0, msg=key)
    partial = dict(model.state_dict())
    del partial['attn_act.coef']
    with pytest.raises(CheckpointMismatchError, match='1 missing key.*attn_act.coef'):
        timm.create_model('karat_vit_tiny_g3u', img_size=48, depth=3, pretrained=True,
                          pretrained_cfg_overlay=dict(state_dict=partial))


def test_flops_are_the_vit_plus_the_operator_hand_count():
    """fvcore (under the countable 'dense' form) counts the softmax ViT plus L h N^2 r (2G + 1) MACs; the published
    1.425 GFLOPs for Tiny G3 counts L h N^2 r (3G + 1) for the operator instead (see backbones/karat.py)."""
    karat = count_flops(timm.create_model('karat_vit_tiny_g3u'), (3, 224, 224))
    softmax = count_flops(timm.create_model('karat_vit_tiny_g3u', attn_act='softmax'), (3, 224, 224))
    assert karat['macs'] - softmax['macs'] == 12 * 3 * N * N * R * (2 * 3 + 1)
    published_extra = 12 * 3 * N * N * R * (3 * 3 + 1)
    assert abs(softmax['macs'] + published_extra - 1.425e9) / 1.425e9 < 0.005
