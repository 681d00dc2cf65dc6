"""OverLoCK specifics: neighbourhood attention against a brute-force definition, ContMix's MACs by hand, the train <->
deploy conversion, the deep-supervision (aux) output, and checkpoint wrappers."""
import copy
import json
import math
from pathlib import Path

import pytest
import timm
import torch

from engine.losses import DistillationLoss
from timm.loss import LabelSmoothingCrossEntropy
from timm.utils import reparameterize_model
from detweights import build_state_dict, fixture_input
from layers import ContMix, kernel_impl, na2d, na2d_av
from layers.flops import flop_count

FIXTURE = json.loads((Path(__file__).parent / 'fixtures' / 'overlock_overlock_xt.json').read_text())


def _window(i: int, length: int, k: int, d: int):
    """Brute force: the k points of i's sub-grid (same residue mod d) nearest to i, centred on i where possible,
    else the k first / last points of the sub-grid (the window slides inwards, it is never cut)."""
    grid = list(range(i % d, length, d))
    pos = grid.index(i)
    first = min(max(pos - k // 2, 0), len(grid) - k)
    return grid[first:first + k]


def _bias_start(i: int, length: int, k: int, d: int) -> int:
    """NATTEN's get_pb_start, written as NATTEN's kernels have it (not as our layers derive it)."""
    r = k // 2
    if d == 1:
        return r + (i < r) * (r - i) + (i + r >= length) * (length - i - 1 - r)
    if i - r * d < 0:
        return k - 1 - i // d
    if i + r * d >= length:
        return (length - i - 1) // d
    return r


def _brute_na(q, k, v, kernel, dilation, rpb=None, weights=None):
    """Per-query loops: softmax over the window of q . k (+ bias), or given weights, then the weighted sum."""
    B, G, H, W, _ = v.shape
    (kh, kw), (dh, dw) = kernel, dilation
    out = torch.zeros(B, G, H, W, v.shape[-1], dtype=v.dtype)
    for i in range(H):
        rows = _window(i, H, kh, dh)
        for j in range(W):
            cols = _window(j, W, kw, dw)
            keys = [(y, x) for y in rows for x in cols]
            if weights is None:
                logits = torch.stack([(q[:, :, i, j] * k[:, :, y, x]).sum(-1) for y, x in keys], -1)
                logits = logits * q.shape[-1] ** -0.5
                if rpb is not None:
                    ph, pw = _bias_start(i, H, kh, dh), _bias_start(j, W, kw, dw)
                    logits = logits + torch.stack([rpb[:, ph + a, pw + b] for a in range(kh) for b in range(kw)], -1)
                attn = logits.softmax(-1)
            else:
                attn = weights[:, :, i, j]
            out[:, :, i, j] = sum(attn[..., n, None] * v[:, :, y, x] for n, (y, x) in enumerate(keys))
    return out


_NA_CASES = [  # (H, W, kernel, dilation)
    (5, 6, (3, 3), (1, 1)),
    (9, 8, (5, 5), (1, 1)),
    (7, 7, (7, 7), (1, 1)),  # kernel = map
    (10, 9, (3, 3), (2, 3)),  # both axes dilated, uneven sub-grids
    (11, 12, (5, 3), (2, 4)),  # exactly kernel * dilation along W
    (13, 13, (3, 3), (4, 4)),
    (16, 14, (13, 5), (1, 2)),
]


@pytest.mark.parametrize('impl', ['reference', 'blocked'])
@pytest.mark.parametrize('height,width,kernel,dilation', _NA_CASES)
def test_na_equals_brute_force_definition(height, width, kernel, dilation, impl):
    g = torch.Generator().manual_seed(height * 100 + width)
    q, k, v = (torch.randn(2, 2, height, width, 3, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(na2d(q, k, v, kernel, dilation, rpb, impl=impl),
                               _brute_na(q, k, v, kernel, dilation, rpb), rtol=0, atol=1e-12)
    torch.testing.assert_close(na2d(q, k, v, kernel, dilation, impl=impl),
                               _brute_na(q, k, v, kernel, dilation), rtol=0, atol=1e-12)
    weights = torch.randn(2, 2, height, width, kernel[0] * kernel[1], generator=g, dtype=torch.float64)
    torch.testing.assert_close(na2d_av(weights, v, kernel, dilation, impl=impl),
                               _brute_na(None, None, v, kernel, dilation, weights=weights), rtol=0, atol=1e-12)


@pytest.mark.parametrize('impl', ['reference', 'blocked'])
@pytest.mark.parametrize('height,width,kernel,dilation', [
    (4, 9, 5, 1),  # map smaller than the kernel
    (9, 9, 3, 4),  # larger than the kernel, smaller than kernel * dilation: a sub-grid of 2 points
    (12, 11, 3, 4),  # one axis short by one
])
def test_maps_smaller_than_kernel_times_dilation_raise_as_natten(height, width, kernel, dilation, impl):
    """NATTEN (>= 0.15, and its current API) rejects K * d > L: some sub-grid has fewer than K points."""
    q = torch.randn(1, 1, height, width, 2)
    with pytest.raises(ValueError, match='product of kernel size and dilation cannot be larger than the input size'):
        na2d(q, q, q, kernel, dilation, impl=impl)
    with pytest.raises(ValueError, match='product of kernel size and dilation'):
        na2d_av(torch.randn(1, 1, height, width, kernel * kernel), q, kernel, dilation, impl=impl)


def test_even_kernel_and_wrong_tap_count_raise():
    v = torch.randn(1, 1, 8, 8, 2)
    with pytest.raises(ValueError, match='odd kernel size'):
        na2d_av(torch.randn(1, 1, 8, 8, 16), v, 4)
    with pytest.raises(ValueError, match='25 taps, kernel \\(3, 3\\) needs 9'):
        na2d_av(torch.randn(1, 1, 8, 8, 25), v, 3)


@pytest.mark.parametrize('dim,ctx_dim,size,kernel,heads', [(256, 84, 14, 13, 4), (336, 84, 7, 7, 6)])
def test_contmix_macs_equal_the_hand_count(dim, ctx_dim, size, kernel, heads):
    """xt's two Focus-Net shapes. The affinities and the NATTEN-style aggregation are what the published (module-hook)
    FLOPs leave out (backbones/overlock.py docstring), so the count must hold them, and in the official formula order
    (affinities, then the 49 -> K^2 + 5^2 projection), not the cheaper folded order of the `blocked` path."""
    layer = ContMix(dim, ctx_dim, kernel, 5, heads).eval()
    hw, groups, half = size * size, 2 * heads, dim // 2
    hand = dict(
        query=hw * dim * half + 2 * hw * half,  # 1x1 conv, BN (fvcore: 2 per element in eval)
        key=ctx_dim * hw + 49 * ctx_dim * half + 2 * 49 * half,  # 7x7 average pool (1 per input element), 1x1, BN
        affinity=hw * 49 * half,  # every pixel's G query groups against the 49 pooled tokens
        projection=groups * hw * 49 * (kernel ** 2 + 25),  # 49 affinities -> K^2 + 5^2 logits per group
        aggregation=hw * half * (25 + kernel ** 2),  # half of the value channels with each kernel
    )
    x = torch.randn(1, dim, size, size)
    with kernel_impl('flops'), torch.no_grad():
        macs, _, _ = flop_count(layer, (x, torch.randn(1, ctx_dim, size, size), x))
    # fvcore reads an einsum's MACs from numpy's einsum_path report, which prints 4 significant digits
    assert macs == pytest.approx(sum(hand.values()), rel=1e-4)


@pytest.fixture(scope='module')
def official_state_dict():
    return build_state_dict(FIXTURE['state_dict'], FIXTURE.get('overrides'))


def _load(name, state_dict, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict), **kwargs)


def test_aux_logits_and_train_to_deploy_conversion(official_state_dict):
    """The aux head reproduces the fixture's aux_logits; timm's reparameterize_model gives the *_reparam layout,
    same outputs."""
    model = _load('overlock_xt', official_state_dict).double().eval()
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])
    with torch.no_grad():
        feats, ctx = model._forward(x)
        aux = model.aux_head(ctx)
    expected_aux = torch.tensor(FIXTURE['outputs']['aux_logits'], dtype=torch.float64)
    assert (aux - expected_aux).abs().max() < 1e-12  # the figure docs/overlock.md quotes

    small = torch.randn(2, 3, 96, 128, dtype=torch.float64)  # also takes ContMix's resize path
    with torch.no_grad():
        before = model(small)
        model = reparameterize_model(model)
        after = model(small)
    assert not any(n.endswith(('origin_bn.weight', 'k5_1.weight')) for n in model.state_dict())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-9 * before.abs().max().item())
    deploy = timm.create_model('overlock_xt_reparam').double().eval()
    deploy.load_state_dict(model.state_dict())  # strict: the converted model has exactly the deploy layout
    with torch.no_grad():
        torch.testing.assert_close(deploy(small), before, rtol=0, atol=1e-9 * before.abs().max().item())
    # and the deploy model loads the converted state through the official-checkpoint path too
    assert sum(p.numel() for p in deploy.parameters()) == 16_791_384
    with pytest.raises(RuntimeError, match='eval'):
        reparameterize_model(timm.create_model('overlock_xt').train())


@pytest.mark.parametrize('criterion', [torch.nn.CrossEntropyLoss(), LabelSmoothingCrossEntropy(0.1)])
def test_training_returns_logits_and_the_loss_adds_the_aux_head(criterion):
    """timm's contract in training (one logits tensor) and the official loss CE(main) + 0.4 CE(aux), through the
    hook protocol, with and without distillation."""
    model = timm.create_model('overlock_xt_reparam', num_classes=7).train()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 5])
    torch.manual_seed(0)
    out = model(x)
    assert torch.is_tensor(out) and out.shape == (2, 7)
    torch.manual_seed(0)
    feats, ctx = model._forward(x)
    main, aux = model.forward_head(feats), model.aux_head(ctx)
    torch.testing.assert_close(out, main, rtol=0, atol=0)
    loss = DistillationLoss(criterion, None)(x, out, target, model)
    torch.testing.assert_close(loss, criterion(main, target) + 0.4 * criterion(aux, target), rtol=0, atol=0)
    copy.deepcopy(model)  # the aux logits were handed out once: no graph stays on the model
    with pytest.raises(RuntimeError, match='training-mode forward'):
        model.training_losses(criterion, target)
    teacher = timm.create_model('overlock_xt_reparam', num_classes=7).eval()
    with torch.no_grad():
        teacher_logits = teacher(x)
    torch.manual_seed(0)
    out = model(x)
    distill = DistillationLoss(criterion, teacher, 'hard', alpha=0.5)(x, out, target, model)
    expected = criterion(main, target) * 0.5 + torch.nn.functional.cross_entropy(
        main, teacher_logits.argmax(1)) * 0.5 + 0.4 * criterion(aux, target)
    torch.testing.assert_close(distill, expected, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def test_without_deep_supervision_the_aux_head_is_dropped(official_state_dict):
    model = _load('overlock_xt', official_state_dict, deep_supervision=False)
    assert model.aux_head is None
    assert sum(p.numel() for p in model.parameters()) == 17_307_272 - 337_672  # the aux head: 337,672
    assert torch.is_tensor(model.train()(torch.randn(2, 3, 64, 64)))


@pytest.mark.parametrize('wrapper', ['state_dict', 'model', 'state_dict_ema', 'module'])
def test_checkpoint_wrappers_are_unwrapped(official_state_dict, wrapper):
    from backbones.overlock import checkpoint_filter_fn
    model = timm.create_model('overlock_xt')
    if wrapper == 'module':
        checkpoint = {f'module.{k}': v for k, v in official_state_dict.items()}
    else:
        checkpoint = {wrapper: official_state_dict}
    converted = checkpoint_filter_fn(checkpoint, model)
    assert converted['head.fc.weight'].shape == (1000, 1024)
    assert math.isclose(converted['stem.0.weight'].sum().item(),
                        official_state_dict['patch_embed1.0.weight'].sum().item())
