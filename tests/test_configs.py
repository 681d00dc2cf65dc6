"""Every recipe in configs/ is accepted by train.py's parser, and every registered model has one."""
from pathlib import Path

import pytest

import train
from engine.config import apply_config
from conftest import ALL_MODELS, model_family

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
CONFIGS = sorted(CONFIG_DIR.rglob('*.yaml'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_is_valid(path):
    parser = train.build_parser()
    values = apply_config(parser, str(path))
    args = parser.parse_args([])
    assert args.model == values['model']
    if path.parent.name != 'demo':
        assert path.stem == values['model'], f'{path} should be named after its model'


@pytest.mark.parametrize('name', ALL_MODELS)
def test_every_model_has_a_recipe(name):
    assert (CONFIG_DIR / model_family(name) / f'{name}.yaml').is_file()
