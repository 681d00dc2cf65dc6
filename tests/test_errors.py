"""Bad input gets a clear error that names the problem."""
import json
from pathlib import Path

import pytest
import timm
import torch

from backbones._helpers import CheckpointMismatchError, check_input_size
from conftest import ALL_MODELS, CI_MODELS
from detweights import build_state_dict

FIXTURE_DIR = Path(__file__).parent / 'fixtures'


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match='Unknown model.*van_b99'):
        timm.create_model('van_b99')


def test_check_input_size_names_expected_and_given():
    with pytest.raises(ValueError, match=r'fixed input size \(224, 224\), got \(200, 224\)'):
        check_input_size(torch.zeros(1, 3, 200, 224), 3, img_size=(224, 224), model_name='m')
    with pytest.raises(ValueError, match='3 input channels, got 1'):
        check_input_size(torch.zeros(1, 1, 224, 224), 3, model_name='m')
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        check_input_size(torch.zeros(3, 224, 224), 3, model_name='m')
    check_input_size(torch.zeros(1, 3, 224, 224), 3, img_size=(224, 224))


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_wrong_channel_count(name):
    model = timm.create_model(name).eval()
    with pytest.raises(ValueError, match='input channels, got 1'):
        model(torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize('name', [n for n in ALL_MODELS if timm.get_pretrained_cfg(n).fixed_input_size])
def test_fixed_size_models_reject_other_sizes(name):
    model = timm.create_model(name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    with pytest.raises(ValueError, match=rf'fixed input size \({h}, {w}\), got \({h + 16}, {w}\)'):
        model(torch.zeros(1, c, h + 16, w))


def test_checkpoint_with_missing_and_unexpected_keys_names_them(tmp_path):
    fixture = json.loads((FIXTURE_DIR / 'van_van_b0.json').read_text())
    state_dict = build_state_dict(fixture['state_dict'])
    del state_dict['block2.1.mlp.fc1.bias']
    state_dict['block2.1.mlp.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'bad.pth.tar'
    torch.save({'state_dict': state_dict}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        timm.create_model('van_b0', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(err.value)
    assert '1 missing key(s): stages.1.blocks.1.mlp.fc1.bias' in message
    assert '1 unexpected key(s): stages.1.blocks.1.mlp.extra.weight' in message


def test_checkpoint_of_another_variant_is_named(tmp_path):
    fixture = json.loads((FIXTURE_DIR / 'van_van_b0.json').read_text())
    path = tmp_path / 'b0.pth.tar'
    torch.save({'state_dict': build_state_dict(fixture['state_dict'])}, path)
    with pytest.raises(CheckpointMismatchError, match='different variant'):
        timm.create_model('van_b1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
