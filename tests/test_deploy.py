"""The deployment form (engine.deploy): BatchNorm folding, the dtype choice, the one-call deploy."""
import pytest
import timm
import torch
from torch import nn

import engine.deploy as deploy_module
from conftest import CI_MODELS, input_size_for, model_params
from engine.deploy import DeployedModel, deploy, fold_batchnorms, keep_freed_memory, native_low_precision

_BN = nn.modules.batchnorm._BatchNorm


def _randomize_batchnorms(model):
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def _count_batchnorms(model):
    return sum(isinstance(m, _BN) for m in model.modules())


# BatchNorms that must be left after folding: those not adjacent to a conv/linear in a Sequential or ConvNormAct
# (pre-norms whose output feeds two branches, norms after attention or pooling, final feature norms).
_EXPECTED_LEFT = {
    'biformer_tiny': 1, 'fmvit_t': 5, 'lsnet_t': 5, 'mala_t': 4, 'overlock_xt_reparam': 19, 'zoo_halonet_h0': 16,
}


@pytest.mark.parametrize('name', model_params())
def test_deploy_equals_model_in_float64(name):
    """The deployed structure computes the model's function (float64, BatchNorm statistics randomized)."""
    model = _randomize_batchnorms(timm.create_model(name)).double().eval()
    x = torch.randn(2, *input_size_for(model, 64), dtype=torch.float64)
    deployed = deploy(model, dtype=None)
    with torch.no_grad():
        expected, got = model(x), deployed(x)
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-9 * scale
    if name in _EXPECTED_LEFT:
        assert _count_batchnorms(deployed) == _EXPECTED_LEFT[name]


def test_fold_patterns_and_refusals():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.ReLU(),  # pre-norm into a 1x1 conv: folds
        nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1),  # pre-norm into a padded 3x3: must not fold (borders)
        nn.Flatten(), nn.Linear(4 * 25, 6), nn.BatchNorm1d(6))
    _randomize_batchnorms(seq).double().eval()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    expected = seq(x)
    assert fold_batchnorms(seq) == 3
    assert torch.allclose(seq(x), expected, atol=1e-12, rtol=0)
    assert [type(m).__name__ for m in seq] == [
        'Conv2d', 'Identity', 'ReLU', 'Identity', 'Conv2d', 'ReLU', 'BatchNorm2d', 'Conv2d', 'Flatten', 'Linear',
        'Identity']
    with pytest.raises(ValueError, match='eval-mode'):
        fold_batchnorms(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


def test_deploy_leaves_model_and_runs_channels_last():
    model = timm.create_model('lsnet_t').eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = deploy(model, dtype=None, channels_last=True)
    assert isinstance(deployed, DeployedModel) and deployed.pretrained_cfg == model.pretrained_cfg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), atol=1e-4, rtol=0)


def test_native_low_precision_reads_cpu_flags(monkeypatch):
    for flags, expected in [({'avx2', 'avx512f'}, None), ({'avx512f', 'avx512_bf16'}, torch.bfloat16),
                            ({'amx_tile', 'amx_bf16'}, torch.bfloat16), ({'avx2'}, None)]:
        monkeypatch.setattr(deploy_module, '_cpu_flags', lambda flags=flags: frozenset(flags))
        assert native_low_precision('cpu') is expected
    monkeypatch.setattr(deploy_module, '_cpu_flags', lambda: frozenset({'avx2'}))
    assert deploy(nn.Sequential(nn.Linear(2, 2))).autocast_dtype is None
    assert deploy(nn.Sequential(nn.Linear(2, 2)), dtype=torch.bfloat16).autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        deploy(nn.Sequential(nn.Linear(2, 2)), dtype='bf16')


def test_amp_without_native_bfloat16_warns_and_uses_float32(monkeypatch, capsys):
    monkeypatch.setattr(deploy_module, '_cpu_flags', lambda: frozenset({'avx2'}))
    assert deploy_module.resolve_amp_dtype(torch.bfloat16, 'cpu') is None
    assert '--amp ignored' in capsys.readouterr().out
    monkeypatch.setattr(deploy_module, '_cpu_flags', lambda: frozenset({'avx512_bf16'}))
    assert deploy_module.resolve_amp_dtype(torch.bfloat16, 'cpu') is torch.bfloat16


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_bfloat16_deploy_tracks_float32(name):
    """The bfloat16 autocast form's logits stay within 3% of the float32 logits' range (bfloat16 keeps 8 mantissa
    bits; seen here: 0.1-0.8%). The classifier is drawn at unit scale so the logits spread as trained ones do (at
    its init scale they are ~1e-5 and any drift would pass). Runs even where bfloat16 is emulated."""
    model = timm.create_model(name).eval()
    for p in model.get_classifier().parameters():
        nn.init.normal_(p, 0., 1.)
    x = torch.randn(2, *input_size_for(model, 64))
    with torch.no_grad():
        reference = model(x)
        got = deploy(model, dtype=torch.bfloat16)(x)
    assert got.dtype == torch.float32
    span = (reference.max() - reference.min()).item()
    assert (got - reference).abs().max().item() <= 0.03 * span


def test_keep_freed_memory_on_glibc():
    import platform
    if platform.libc_ver()[0] != 'glibc':
        pytest.skip('mallopt is glibc')
    assert keep_freed_memory() is True
