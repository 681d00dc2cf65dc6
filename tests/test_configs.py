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


@pytest.mark.parametrize('script', ['train.py', 'validate.py', 'benchmark.py'])
def test_timm_flags_we_skip_are_not_ours_and_are_in_the_readme(script):
    """The list of timm options we do not implement (skipped with a warning by -c) names no option we accept, and
    the README's flag table gives each of them with its reason."""
    import benchmark
    import eval as eval_script
    from engine.timm_flags import TIMM_UNSUPPORTED
    parser = {'train.py': train, 'validate.py': eval_script, 'benchmark.py': benchmark}[script].build_parser()
    ours = {a.dest for a in parser._actions} | {f[2:].replace('-', '_') for a in parser._actions
                                                for f in a.option_strings}
    skipped = TIMM_UNSUPPORTED[script]
    assert not set(skipped) & ours
    readme = (CONFIG_DIR.parent / 'README.md').read_text()
    table = readme[readme.index("## timm's flags"):]
    for name, reason in skipped.items():
        flag = '--local_rank' if name == 'local_rank' else '--' + name.replace('_', '-')
        assert f'`{flag}`' in table and reason in table, name
