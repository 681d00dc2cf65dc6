"""LSNet specifics: BN fusion, no stale attention-bias cache, any input size, distilled heads."""
import json
from pathlib import Path

import pytest
import timm
import torch

from timm.utils import reparameterize_model

from detweights import build_state_dict, fixture_input

FIXTURE = json.loads((Path(__file__).parent / 'fixtures' / 'lsnet_lsnet_t.json').read_text())


@pytest.fixture(scope='module')
def official_state_dict():
    return build_state_dict(FIXTURE['state_dict'], FIXTURE.get('overrides'))


def _expected():
    return torch.tensor(FIXTURE['outputs']['logits'], dtype=torch.float64)


def test_fused_model_gives_the_same_logits(official_state_dict):
    model = timm.create_model('lsnet_t', pretrained=True, pretrained_cfg_overlay=dict(state_dict=official_state_dict))
    model = reparameterize_model(model.double().eval())
    # only LS convolution's BN after SKA stays (the official fusion leaves it too)
    remaining = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    assert remaining and all(n.endswith('.mixer.bn') for n in remaining), remaining
    names = {type(m).__name__ for m in model.modules()}
    assert 'ConvNorm' not in names and 'RepVggDw' not in names and 'NormLinear' not in names
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])
    with torch.no_grad():
        assert (model(x) - _expected()).abs().max() < 1e-9
    with pytest.raises(RuntimeError, match='eval'):
        reparameterize_model(timm.create_model('lsnet_t').train())


def test_weights_loaded_after_eval_are_used(official_state_dict):
    """The official attention caches its bias in .eval() and never refreshes it on load; ours must not."""
    model = timm.create_model('lsnet_t').double().eval()
    converted = timm.create_model('lsnet_t', pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=official_state_dict)).state_dict()
    model.load_state_dict(converted)
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])
    with torch.no_grad():
        assert (model(x) - _expected()).abs().max() < 1e-9


@pytest.mark.parametrize('size', [(160, 160), (224, 224), (256, 200), (320, 288)])
def test_any_input_size(size, official_state_dict):
    model = timm.create_model('lsnet_t', pretrained=True, pretrained_cfg_overlay=dict(state_dict=official_state_dict))
    model = model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_bias_table_is_exact_on_the_trained_resolution():
    """At the 4x4 map the gathered bias is the table itself, indexed by (|dy|, |dx|) row-major."""
    from backbones.lsnet import Attention
    attn = Attention(64)
    with torch.no_grad():
        attn.attention_biases.copy_(torch.arange(4 * 16, dtype=torch.float).view(4, 16))
    bias = attn._bias(4, 4)
    assert bias.shape == (4, 16, 16)
    assert bias[1, 0, 5].item() == 16 + 1 * 4 + 1  # points (0,0) and (1,1): offset (1, 1)
    assert bias[2, 15, 3].item() == 32 + 3 * 4 + 0  # points (3,3) and (0,3): offset (3, 0)
    assert attn._bias(6, 6).shape == (4, 36, 36)


def test_distilled_heads():
    model = timm.create_model('lsnet_t_distill', num_classes=10).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        expected = (model.head(feats) + model.head_dist(feats)) / 2
    torch.testing.assert_close(out, expected)
    model.train().set_distilled_training(True)
    logits, logits_dist = model(x)
    assert logits.shape == logits_dist.shape == (2, 10)
