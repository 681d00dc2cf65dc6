"""The timm contract, checked for every registered model (a new family gets these tests for free)."""
import pkgutil

import pytest
import timm
import torch
from torch import nn

import layers
from engine.hooks import set_distilled_training, training_losses

import backbones
from conftest import ALL_MODELS, CI_MODELS, ceil_div, input_size_for, meta_param_count, model_family, model_params
from official_params import DERIVED_PARAMS, OFFICIAL_PARAMS, PUBLISHED_PARAMS, SELF_MADE_PARAMS

FWD_SIZE, BWD_SIZE, FEAT_SIZE = 224, 128, 96


def _create(name, **kwargs):
    return timm.create_model(name, **kwargs)


EXACT_PARAM_TABLES = {'official': OFFICIAL_PARAMS, 'derived': DERIVED_PARAMS, 'self-made': SELF_MADE_PARAMS}


@pytest.mark.parametrize('name', ALL_MODELS)
def test_param_count(name):
    """Equal to the official constructor's count, our derivation of the paper's, or (reconstructions) our own."""
    tables = [kind for kind, table in EXACT_PARAM_TABLES.items() if name in table]
    assert len(tables) == 1, f'{name} must be in exactly one count table of tests/official_params.py, is in {tables}'
    assert meta_param_count(name) == EXACT_PARAM_TABLES[tables[0]][name]


def test_param_tables_name_only_registered_models():
    listed = set(PUBLISHED_PARAMS).union(*EXACT_PARAM_TABLES.values())
    assert listed <= set(ALL_MODELS), sorted(listed - set(ALL_MODELS))


@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS))
def test_param_count_matches_the_published_rounded_figure(name):
    published, kwargs = PUBLISHED_PARAMS[name]
    decimals = len(repr(published).split('.')[1]) if isinstance(published, float) else 0
    unit = 10 ** -decimals
    ours = meta_param_count(name, **kwargs) / 1e6
    assert abs(ours - published) < unit, f'{name}: {ours:.4f} M, published {published} M'


def test_every_family_module_has_a_ci_model():
    """Every backbones/<family>.py file registers models, and at least one of them runs in the default run."""
    family_modules = {m.name for m in pkgutil.iter_modules(backbones.__path__) if not m.name.startswith('_')}
    assert family_modules, 'no family modules found in backbones/'
    ci_families = {model_family(n) for n in CI_MODELS}
    missing = sorted(family_modules - ci_families)
    assert not missing, f'family modules without a model in the default (CI) run: {missing}'
    assert CI_MODELS <= set(ALL_MODELS)


@pytest.mark.parametrize('name', model_params())
def test_model_forward(name):
    model = _create(name).eval()
    c, h, w = input_size_for(model, FWD_SIZE)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_classes)
        assert torch.isfinite(out).all()
        again = model(x)
    torch.testing.assert_close(again, out, rtol=0, atol=0, msg='eval forward is not deterministic')


@pytest.mark.parametrize('name', model_params())
def test_model_backward_and_grad_checkpointing(name):
    model = _create(name, num_classes=42, drop_path_rate=0.).train()
    c, h, w = input_size_for(model, BWD_SIZE)
    x = torch.randn(2, c, h, w)

    def grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = model(x)
        # the model's own training terms (engine/hooks.py: OverLoCK's aux head, AS-ViT's budget) enter the loss
        loss = out.mean() + sum(t for t in training_losses(model, nn.CrossEntropyLoss(), target).values())
        loss.backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    target = torch.tensor([0, 41])
    out, ref_grads = grads()
    assert out.shape == (2, 42)
    missing = [n for n, g in ref_grads.items() if g is None]
    assert not missing, f'parameters without gradient: {missing}'
    model.set_grad_checkpointing(True)
    out_ckpt, ckpt_grads = grads()
    torch.testing.assert_close(out_ckpt, out, rtol=1e-5, atol=1e-6)
    for n in ref_grads:
        torch.testing.assert_close(ckpt_grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f'grad of {n}')


@pytest.mark.parametrize('distilled', [False, True], ids=['plain', 'distilled'])
@pytest.mark.parametrize('name', model_params())
def test_model_train_forward_keeps_timms_contract(name, distilled):
    """timm's own train-mode test: logits, or a tuple of same-shaped logits (distilled training), backpropagate."""
    model = _create(name).train()
    if distilled:
        set_distilled_training(model)
    c, h, w = input_size_for(model, BWD_SIZE)
    outputs = model(torch.randn(2, c, h, w))
    assert isinstance(outputs, (torch.Tensor, tuple)), f'train-mode forward returned a {type(outputs).__name__}'
    if isinstance(outputs, tuple):
        assert distilled and all(o.shape == (2, model.num_classes) for o in outputs)
        outputs = torch.cat(outputs)
    assert outputs.shape[-1] == model.num_classes
    outputs.mean().backward()


@pytest.mark.parametrize('name', model_params())
def test_model_default_cfg(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    for field in ('license', 'paper_ids', 'origin_url', 'crop_pct', 'interpolation', 'mean', 'std',
                  'first_conv', 'classifier', 'input_size'):
        assert cfg.get(field) is not None, f'{name} pretrained_cfg lacks {field}'
    assert 'pool_size' in cfg, f'{name} pretrained_cfg lacks pool_size (None for token-sequence features)'
    assert model.num_classes == cfg['num_classes'] and model.num_features > 0 and model.head_hidden_size > 0
    state_dict = model.state_dict()
    def _names(value):
        return value if isinstance(value, (tuple, list)) else (value,)
    for module_name in (*_names(cfg['classifier']), *_names(cfg['first_conv'])):
        assert f'{module_name}.weight' in state_dict, f'{module_name} is not a module with a weight'

    c, h, w = input_size_for(model, FWD_SIZE)
    x = torch.randn(1, c, h, w)
    # feature maps (B, C, H, W) with pool_size, or token sequences (B, N, C) with pool_size None
    unpooled_ndim = 3 if cfg['pool_size'] is None else 4
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == unpooled_ndim
        if cfg['pool_size'] is None:
            assert feats.shape[-1] == model.num_features
        else:
            scale = (h / cfg['input_size'][1], w / cfg['input_size'][2])
            assert feats.shape[1] == model.num_features
            assert tuple(feats.shape[-2:]) == tuple(int(p * s) for p, s in zip(cfg['pool_size'], scale))
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)

        default_pool = model.global_pool
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape
        model.reset_classifier(0, '')
        assert model(x).ndim == unpooled_ndim
        model.reset_classifier(17, default_pool)
        assert model(x).shape == (1, 17)

        unpooled = _create(name, num_classes=0, global_pool='').eval()
        assert unpooled(x).ndim == unpooled_ndim


@pytest.mark.parametrize('name', model_params())
def test_model_features_only(name):
    model = _create(name, features_only=True).eval()
    info = model.feature_info
    assert len(info.channels()) >= 3
    c, h, w = input_size_for(model, FEAT_SIZE)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape[1] for o in outs] == info.channels()
    for o, r in zip(outs, info.reduction()):
        assert o.shape[-2] <= ceil_div(h, r) + 1 and o.shape[-1] <= ceil_div(w, r) + 1

    n = len(info.channels())
    picked = _create(name, features_only=True, out_indices=(1, -1)).eval()
    assert picked.feature_info.channels() == [info.channels()[1], info.channels()[n - 1]]
    with torch.no_grad():
        picked_outs = picked(x)
    assert [o.shape for o in picked_outs] == [outs[1].shape, outs[-1].shape]
    num_levels = len(_create(name).feature_info)
    with pytest.raises(Exception, match=r'(?i)index|range'):
        _create(name, features_only=True, out_indices=(num_levels,))


@pytest.mark.parametrize('name', model_params())
def test_model_forward_intermediates(name):
    model = _create(name).eval()
    c, h, w = input_size_for(model, FEAT_SIZE)
    stride = max(f['reduction'] for f in model.feature_info)
    h, w = ceil_div(h, stride) * stride, ceil_div(w, stride) * stride  # floor- and ceil-downsampling nets agree
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        expected = model.forward_features(x)
        torch.testing.assert_close(final, expected)
        assert [t.shape[1] for t in intermediates] == [f['num_chs'] for f in model.feature_info]
        for t, f in zip(intermediates, model.feature_info):
            assert t.shape[-1] == ceil_div(w, f['reduction'])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2
        torch.testing.assert_close(last_two[-1], intermediates[-1])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], intermediates[0])


@pytest.mark.parametrize('name', model_params())
def test_model_any_input_size(name):
    """Non-square, non-multiple-of-stride inputs run (unless the cfg says the size is fixed)."""
    model = _create(name).eval()
    if model.pretrained_cfg.get('fixed_input_size', False):
        pytest.skip('fixed input size (see test_errors.py)')
    min_h, min_w = model.pretrained_cfg.get('min_input_size', (3, 0, 0))[1:]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97 + min_h, 131 + min_w))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', model_params())
def test_model_torch_compile(name):
    """torch.compile (graph breaks allowed) gives the eager outputs; every model under -m slow."""
    model = _create(name).eval()
    x = torch.randn(1, *input_size_for(model, 64))
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, dynamic=False)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_model_kernel_impl_reaches_every_operator(name):
    """create_model(..., kernel_impl=) sets every operator module's choice (layers.set_module_kernel_impl), and the
    model then computes what the process-wide setting computes."""
    model = _create(name, kernel_impl='reference').eval()
    chosen = {n: m.kernel_impl for n, m in model.named_modules() if hasattr(m, 'kernel_impl')}
    assert chosen, f'{name} has no operator module with a kernel_impl attribute'
    assert set(chosen.values()) == {'reference'}, {n: v for n, v in chosen.items() if v != 'reference'}
    default = _create(name).eval()
    default.load_state_dict(model.state_dict())
    assert {m.kernel_impl for m in default.modules() if hasattr(m, 'kernel_impl')} == {None}
    x = torch.randn(2, *input_size_for(model, FEAT_SIZE))
    with torch.no_grad():
        ours = model(x)
        with layers.kernel_impl('reference'):
            expected = default(x)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
