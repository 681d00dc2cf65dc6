"""timm's own tools and hub formats with our models: the `engine.timm_run` runner and save_for_hf/local-dir."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from conftest import CI_MODELS, input_size_for

REPO = Path(__file__).resolve().parents[1]

# What timm's validate.py / onnx_export.py do with --model: create_model by name, then use it.
_VALIDATE_LIKE = textwrap.dedent('''
    import argparse
    import timm
    import torch
    parser = argparse.ArgumentParser()
    parser.add_argument('--model', required=True)
    args = parser.parse_args()
    model = timm.create_model(args.model, exportable=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *model.pretrained_cfg['input_size']))
    print(args.model, tuple(out.shape), model.exportable)
''')


def _run(*args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_timm_script_without_the_runner_does_not_know_our_models(tmp_path):
    (tmp_path / 'validate_like.py').write_text(_VALIDATE_LIKE)
    result = _run('validate_like.py', '--model', 'van_b0', cwd=tmp_path)
    assert result.returncode != 0 and 'Unknown model' in result.stderr


def test_timm_run_runs_a_timm_style_script_with_our_models(tmp_path):
    script = tmp_path / 'validate_like.py'
    script.write_text(_VALIDATE_LIKE)
    result = _run('-m', 'engine.timm_run', str(script), '--model', 'van_b0', cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'van_b0 (1, 1000) True'


def test_timm_run_names_a_missing_script(tmp_path):
    result = _run('-m', 'engine.timm_run', str(tmp_path / 'validate.py'), cwd=REPO)
    assert result.returncode != 0 and 'no script at' in result.stderr and 'pytorch-image-models' in result.stderr


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_save_for_hf_then_local_dir_round_trips(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    timm.models.save_for_hf(model, str(tmp_path))
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert type(loaded) is type(model)
    c, h, w = input_size_for(model, 128)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
