"""Official-layout checkpoints, built from the vendored reference fixtures, reproduce the official logits.

Each fixture in tests/fixtures/ was made by running the official code in float64 on weights from the
`detweights/1` fill rule. We rebuild that state dict with our own fill (tests/detweights.py), save it wrapped
as the official file is, and load it the way a user loads official weights.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

from conftest import ALL_MODELS, input_size_for, meta_param_count, model_family
from detweights import build_state_dict, fixture_input

FIXTURE_DIR = Path(__file__).parent / 'fixtures'
# A directory of reference fixtures to check the vendored copies against (optional; the fixtures' origin).
REFERENCE_DIR_ENV = 'ZOO_REFERENCE_FIXTURES'

# The `family` field of a fixture -> the backbones/<module>.py that implements it. Explicit, because the
# fixtures name families their own way (`as_vit` is backbones/asvit.py); an unmapped family fails the tests.
FIXTURE_FAMILY_MODULES = {
    'as_vit': 'asvit',
    'biformer': 'biformer',
    'convit': 'convit',
    'halonet': 'halonet',
    'litv2': 'litv2',
    'lsnet': 'lsnet',
    'mala': 'mala',
    'overlock': 'overlock',
    'van': 'van',
}

# fixture file -> our model name, or a list of (model name, extra model kwargs, fixture output key)
FIXTURE_MODELS = {
    'van_van_b0.json': 'van_b0',
    'biformer_biformer_tiny.json': 'biformer_tiny',
    'halonet_halonet26t.json': 'zoo_halonet26t',
    'mala_MALA_T.json': 'mala_t',
    'lsnet_lsnet_t.json': 'lsnet_t',
    'litv2_litv2_s.json': 'litv2_s',
    'convit_convit_tiny.json': 'zoo_convit_tiny',
    'overlock_overlock_xt.json': 'overlock_xt',
    'as_vit_deit_tiny.json': [
        ('asvit_deit_tiny', {}, 'logits_b1'),  # batch-independent default = the official batch-size-1 result
        ('asvit_deit_tiny', {'prune_mode': 'batch_topk'}, 'logits'),  # the official batched rule
    ],
}
KERNEL_IMPLS = ('reference', 'auto')
# Largest |our logits - official logits| allowed per fixture, float64, both kernel paths. These are the figures
# docs/<family>.md quotes ("< tolerance"); each is about 3-20x the difference measured on the reference machine.
FIXTURE_TOLERANCES = {
    'as_vit_deit_tiny.json': 1e-13,
    'biformer_biformer_tiny.json': 1e-12,  # logits up to 213
    'convit_convit_tiny.json': 1e-13,
    'halonet_halonet26t.json': 1e-14,
    'litv2_litv2_s.json': 1e-13,
    'lsnet_lsnet_t.json': 5e-12,
    'mala_MALA_T.json': 5e-13,
    'overlock_overlock_xt.json': 1e-12,  # logits up to 125
    'van_van_b0.json': 1e-14,
}


def _cases(fixture_name):
    spec = FIXTURE_MODELS[fixture_name]
    return [(spec, {}, 'logits')] if isinstance(spec, str) else spec


def _model_name(fixture_name):
    return _cases(fixture_name)[0][0]


FIXTURE_CASES = [pytest.param(f, *case, id=f'{f}-{case[2]}') for f in sorted(FIXTURE_MODELS) for case in _cases(f)]


def _load(name):
    return json.loads((FIXTURE_DIR / name).read_text())


def _save_official(fixture, path):
    state_dict = build_state_dict(fixture['state_dict'], fixture.get('overrides'))
    wrapper = fixture['checkpoint']['wrapper']
    torch.save({wrapper: state_dict} if wrapper else state_dict, path)
    return state_dict


def _module_of_family(family):
    assert family in FIXTURE_FAMILY_MODULES, (
        f'fixture family {family!r} is not mapped to a backbones module in FIXTURE_FAMILY_MODULES')
    return FIXTURE_FAMILY_MODULES[family]


def test_every_vendored_fixture_is_tested():
    assert sorted(p.name for p in FIXTURE_DIR.glob('*.json')) == sorted(FIXTURE_MODELS) == sorted(FIXTURE_TOLERANCES)


@pytest.mark.parametrize('fixture_name', sorted(FIXTURE_MODELS))
def test_fixture_family_is_the_module_of_its_model(fixture_name):
    family = _load(fixture_name)['family']
    for model_name, _, _ in _cases(fixture_name):
        assert _module_of_family(family) == model_family(model_name), f'{fixture_name} tests {model_name}'


def test_fixture_family_map_rejects_an_unmapped_family():
    with pytest.raises(AssertionError, match="'no_such_family' is not mapped"):
        _module_of_family('no_such_family')


def test_every_reference_fixture_of_an_implemented_family_is_vendored():
    """Run with ZOO_REFERENCE_FIXTURES=<dir of reference fixtures> to check the vendored copies against them."""
    reference_dir = os.environ.get(REFERENCE_DIR_ENV)
    if not reference_dir:
        pytest.skip(f'{REFERENCE_DIR_ENV} is not set')
    paths = sorted(Path(reference_dir).glob('*.json'))
    assert paths, f'{REFERENCE_DIR_ENV}={reference_dir} holds no fixtures'
    families = {model_family(n) for n in ALL_MODELS}
    for path in paths:
        if _module_of_family(json.loads(path.read_text())['family']) in families:
            assert (FIXTURE_DIR / path.name).read_bytes() == path.read_bytes(), f'{path.name} not vendored as is'


@pytest.mark.parametrize('impl', KERNEL_IMPLS)
@pytest.mark.parametrize('fixture_name,model_name,model_kwargs,output_key', FIXTURE_CASES)
def test_fixture_logits(fixture_name, model_name, model_kwargs, output_key, impl, tmp_path):
    fixture = _load(fixture_name)
    path = tmp_path / 'official.pth.tar'
    _save_official(fixture, path)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              kernel_impl=impl, **model_kwargs)
    model = model.double().eval()
    x = fixture_input(fixture['input']['seed'], fixture['input']['shape'])
    expected = torch.tensor(fixture['outputs'][output_key], dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    bound = FIXTURE_TOLERANCES[fixture_name]
    diff = (logits - expected).abs().max().item()
    assert diff < bound, f'{model_name} ({impl}) max abs diff {diff:.3e}, tolerance {bound:.0e}'
    assert sum(p.numel() for p in model.parameters()) == fixture['params'] == meta_param_count(model_name)


@pytest.mark.parametrize('fixture_name', sorted(FIXTURE_MODELS))
def test_official_checkpoint_adapts_head_and_input_channels(fixture_name, tmp_path):
    fixture = _load(fixture_name)
    path = tmp_path / 'official.pth.tar'
    official = _save_official(fixture, path)
    model = timm.create_model(_model_name(fixture_name), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), num_classes=10, in_chans=1).eval()
    first_conv = model.pretrained_cfg['first_conv']
    classifiers = model.pretrained_cfg['classifier']  # a tuple for models with several heads (OverLoCK's aux head)
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    assert model.get_classifier().out_features == 10
    assert model.get_submodule(first_conv).weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, *input_size_for(model, 64)[1:])).shape == (1, 10)
    # every tensor that was not adapted holds the official value
    converted = sys.modules[type(model).__module__].checkpoint_filter_fn(official, model)
    compared = skipped = 0
    for key, value in model.state_dict().items():
        if key.startswith((first_conv + '.', *(c + '.' for c in classifiers))):
            skipped += 1
            continue
        torch.testing.assert_close(value, converted[key].to(value.dtype), rtol=0, atol=0, msg=key)
        compared += 1
    assert compared > 0 and compared + skipped == len(converted)


@pytest.mark.parametrize('fixture_name', sorted(FIXTURE_MODELS))
def test_filter_is_a_no_op_on_our_own_checkpoints(fixture_name, tmp_path):
    fixture = _load(fixture_name)
    model_name = _model_name(fixture_name)
    official_path, ours_path = tmp_path / 'official.pth.tar', tmp_path / 'ours.pth'
    _save_official(fixture, official_path)
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(official_path)))
    torch.save(model.state_dict(), ours_path)
    again = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ours_path)))
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_convit_matches_timm_and_loads_timm_checkpoints():
    """timm's ConViT is the second reference: our model holding timm's random weights gives timm's logits."""
    theirs = timm.create_model('convit_tiny').eval()
    ours = timm.create_model('zoo_convit_tiny', pretrained=True,
                             pretrained_cfg_overlay=dict(state_dict=theirs.state_dict())).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name,prefix', [('zoo_convit_tiny', 0), ('asvit_deit_tiny', 1)])
def test_position_embedding_is_resampled_for_another_image_size(name, prefix):
    source = timm.create_model(name).state_dict()
    model = timm.create_model(name, img_size=256, pretrained=True, pretrained_cfg_overlay=dict(state_dict=source))
    assert model.pos_embed.shape[1] == prefix + 16 * 16
    # the class-token slot is carried over untouched
    torch.testing.assert_close(model.pos_embed[:, :prefix], source['pos_embed'][:, :prefix])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
    with pytest.raises(ValueError, match=r'fixed input size \(256, 256\), got \(224, 224\)'):
        model(torch.randn(1, 3, 224, 224))
