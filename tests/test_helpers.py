"""The shared pieces of the family files and of the hook protocol, on their own."""
import pytest
import torch

from backbones import unwrap_state_dict
from backbones._helpers import feature_take_indices
from engine.hooks import split_train_outputs, teacher_targets


def test_unwrap_state_dict_wrappers_ema_and_module_prefix():
    plain, ema = {'a.weight': torch.zeros(1)}, {'a.weight': torch.ones(1)}
    wrapped = {'state_dict': {f'module.{k}': v for k, v in plain.items()}, 'state_dict_ema': ema}
    assert unwrap_state_dict(wrapped).keys() == {'a.weight'}
    assert unwrap_state_dict(wrapped)['a.weight'] is plain['a.weight']
    assert unwrap_state_dict(wrapped, ema='prefer')['a.weight'] is ema['a.weight']
    assert unwrap_state_dict(wrapped, ema='require')['a.weight'] is ema['a.weight']
    assert unwrap_state_dict({'model': plain}, ema='prefer') is plain
    assert unwrap_state_dict(plain) is plain
    with pytest.raises(ValueError, match='no EMA'):
        unwrap_state_dict({'model': plain}, ema='require')
    with pytest.raises(ValueError, match="'skip', 'prefer' or 'require'"):
        unwrap_state_dict(plain, ema='yes')


def test_feature_take_indices():
    assert feature_take_indices(4) == ([0, 1, 2, 3], 3)
    assert feature_take_indices(4, 2) == ([2, 3], 3)
    assert feature_take_indices(4, [0, -1]) == ([0, 3], 3)
    for bad in (0, 5, [4], [-5], []):
        with pytest.raises(ValueError):
            feature_take_indices(4, bad)


def test_train_outputs_are_logits_or_a_pair_of_logits():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert split_train_outputs(a) == (a, a)
    assert split_train_outputs((a, b)) == (a, b)
    for bad in (dict(main=a, aux=b), (a, b, torch.zeros(2, 5, 3)), (a, torch.zeros(2, 4))):
        with pytest.raises(TypeError, match='training_losses'):
            split_train_outputs(bad)


def test_teacher_targets_without_student_requests_call_the_teacher():
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    torch.testing.assert_close(teacher_targets(teacher, x, torch.nn.Identity())['logits'], teacher(x))
