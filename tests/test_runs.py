"""train.py's run folders as timm lays them out (args.yaml, summary.csv, curves), explicit resumes that refuse a
changed meaning, timm's own args.yaml through -c, timm's flag parsing, and a diverging run ending in one line."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from engine.config import ConfigError, apply_config
from engine.data import DigitsDataset, export_image_folder
from engine.runs import RunConflictError, check_same_meaning
from conftest import is_png

ROOT = Path(__file__).resolve().parents[1]
# A few seconds per epoch: timm's test_vit at 32x32 on 24 training and 16 validation digits.
TINY = ['--model', 'test_vit', '--model-kwargs', 'img_size=(32, 32)', 'patch_size=8', '--img-size', 32,
        '--crop-pct', 1.0, '-b', 8, '--max-steps-per-epoch', 3, '--warmup-epochs', 0, '--workers', 0,
        '--threads', 1, '--device', 'cpu', '--smoothing', 0]

# The shape of an args.yaml that timm's train.py writes: our options, timm options we do not implement, and
# timm's spellings of unset values ('' and null).
TIMM_ARGS_YAML = """\
aa: null
amp: false
amp_dtype: float16
aug_repeats: 0
aug_splits: 0
batch_size: 8
bce_loss: false
bn_eps: null
channels_last: false
checkpoint_hist: 10
clip_grad: null
clip_mode: norm
color_jitter: 0.4
config: ''
cooldown_epochs: 0
crop_pct: 1.0
data: null
data_dir: null
dataset: ''
decay_epochs: 90
decay_milestones: [90, 180, 270]
decay_rate: 0.1
device: cpu
drop: 0.0
drop_path: null
epoch_repeats: 0.0
epochs: 1
experiment: ''
hflip: 0.5
img_size: 32
input_size: null
interpolation: ''
jsd_loss: false
kd_model_name: null
kd_temperature: 4.0
local_rank: 0
log_interval: 50
lr: 0.001
lr_base: 0.1
lr_base_scale: ''
lr_base_size: 256
mean: null
min_lr: 0
mixup: 0.0
model: test_vit
model_ema: false
model_kwargs: {}
momentum: 0.9
opt: adamw
opt_eps: null
opt_kwargs: {}
output: ''
pretrained: false
ratio: [0.75, 1.3333333333333333]
reprob: 0.0
resume: ''
scale: [0.08, 1.0]
sched: step
seed: 42
smoothing: 0.1
train_interpolation: random
train_split: train
val_split: validation
warmup_epochs: 5
warmup_lr: 1.0e-05
weight_decay: 2.0e-05
workers: 4
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')


def _train(*args, check=True):
    result = subprocess.run([sys.executable, str(ROOT / 'train.py'), *map(str, args)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f'train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
                             f'{result.stderr[-3000:]}')
    return result


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    """An ImageNet-style root: <root>/train and <root>/validation, 3 classes."""
    root = tmp_path_factory.mktemp('tiny')
    for split, name, count in (('train', 'train', 24), ('val', 'validation', 16)):
        dataset = DigitsDataset(split, 32)
        dataset.indices = [i for i in dataset.indices if dataset.targets[i] < 3][:count]
        export_image_folder(dataset, root / name)
    return root


def test_run_folder_resume_rules_and_timm_args_yaml(tiny_root, tmp_path):
    config = tmp_path / 'args.yaml'
    config.write_text(TIMM_ARGS_YAML)
    first = _train(tiny_root, '-c', config, *TINY, '--output', tmp_path / 'runs', '--experiment', 'r')
    # timm options we do not implement: one warning naming them; our options from the same file are used
    warnings = [line for line in first.stderr.splitlines() if 'not implemented here' in line]
    assert len(warnings) == 1 and all(k in warnings[0] for k in ('aug_splits', 'jsd_loss', 'bce_loss', 'local_rank'))
    run = tmp_path / 'runs' / 'r'
    saved = yaml.safe_load((run / 'args.yaml').read_text())
    assert saved['model'] == 'test_vit' and saved['sched'] == 'step' and saved['opt'] == 'adamw'
    assert saved['model_kwargs'] == {'img_size': [32, 32], 'patch_size': 8}  # ParseKwargs: a tuple, not a string
    assert saved['data'] == str(tiny_root) and saved['val_split'] == 'validation'
    with open(run / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0']
    assert list(rows[0])[:2] == ['epoch', 'train_loss'] and {'eval_top1', 'eval_top5', 'lr'} <= set(rows[0])
    assert is_png(run / 'curves.png')
    before = (run / 'last.pth.tar').read_bytes()

    # the same run with a changed meaning is refused in one line naming each difference, nothing is touched
    refused = _train(tiny_root, '-c', config, *TINY, '--output', tmp_path / 'runs', '--experiment', 'r',
                     '--lr', 0.5, '--seed', 3, check=False)
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr
    message = refused.stderr.strip().splitlines()[-1]
    assert 'lr: 0.001 -> 0.5' in message and 'seed: 42 -> 3' in message
    assert (run / 'last.pth.tar').read_bytes() == before

    # what a scheduler restarts: --resume auto finds the run; more epochs (a step schedule allows it) and other
    # workers are accepted and logged
    resumed = _train(tiny_root, '-c', config, *TINY, '--output', tmp_path / 'runs', '--resume', 'auto',
                     '--epochs', 2, '--workers', 1)
    assert 'Resumed from' in resumed.stdout and 'epochs: 1 -> 2' in resumed.stdout
    with open(run / 'summary.csv', newline='') as f:
        assert [r['epoch'] for r in csv.DictReader(f)] == ['0', '1']
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == ['r']  # no second folder


def test_meaning_check_rules():
    saved = dict(model='van_b0', lr=None, epochs=300, sched='cosine', workers=4, seed=42, model_kwargs={'a': [1, 2]})
    assert check_same_meaning(saved, dict(saved, workers=8, model_kwargs={'a': (1, 2)}), 'run') == [
        'workers: 4 -> 8']
    with pytest.raises(RunConflictError, match=r'epochs: 300 -> 400 \(the cosine schedule is shaped by the run'):
        check_same_meaning(saved, dict(saved, epochs=400), 'run')
    assert check_same_meaning(dict(saved, sched='step'), dict(saved, sched='step', epochs=400), 'run') == [
        'epochs: 300 -> 400']
    with pytest.raises(RunConflictError, match=r"model: 'van_b0' -> 'van_b1'; seed: 42 -> 1\)"):
        check_same_meaning(saved, dict(saved, model='van_b1', seed=1), 'run')


def test_timm_config_keys_typos_and_kwargs(tmp_path):
    config = tmp_path / 'args.yaml'
    config.write_text(TIMM_ARGS_YAML + 'epochz: 3\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'epochz' \(did you mean 'epochs'\?\)"):
        apply_config(train.build_parser(), str(config))
    config.write_text(TIMM_ARGS_YAML.replace('model_kwargs: {}', "model_kwargs: ['drop_rate=0.1', 'x=None']"))
    warned = []
    parser = train.build_parser()
    values = apply_config(parser, str(config), warn=warned.append)
    assert values['model_kwargs'] == {'drop_rate': 0.1, 'x': None} and values['dataset'] == 'folder'
    assert values['distill_tau'] == 4.0 and values['distill_model'] is None  # timm's kd_* names are ours too
    assert len(warned) == 1 and 'train_interpolation' in warned[0] and 'epoch_repeats' in warned[0]
    args = parser.parse_args(['--model-kwargs', 'img_size=(32,32)', 'mode=None', 'name=abc', '--opt-kwargs',
                              'foreach=False'])
    assert args.model_kwargs == {'img_size': (32, 32), 'mode': None, 'name': 'abc'}
    assert args.opt_kwargs == {'foreach': False} and args.lr_base_scale == ''


def test_lr_base_scale_follows_timm(tiny_root, tmp_path):
    """No --lr: sqrt scaling for adam-family optimizers by default (timm's rule); 'linear' when asked."""
    result = _train(tiny_root, *TINY, '--opt', 'adamw', '--lr-base', 1e-3, '--lr-base-size', 32, '--epochs', 1,
                    '--max-steps-per-epoch', 1, '--output', tmp_path, '--experiment', 'a')
    assert 'lr 0.0005: lr-base 0.001 for a batch of 32, scaled (sqrt) to the global batch 8' in result.stdout
    args = train.build_parser().parse_args(['--lr-base-scale', 'linear'])
    assert args.lr_base_scale == 'linear' and args.lr is None


def test_diverging_run_ends_in_one_line_and_keeps_the_good_checkpoint(tiny_root, tmp_path):
    # epoch 0 trains at the warmup lr; epoch 1 at an absurd one
    result = _train(tiny_root, *TINY, '--opt', 'sgd', '--sched', 'step', '--epochs', 2, '--warmup-epochs', 1,
                    '--warmup-lr', 1e-4, '--lr', 1e30, '--output', tmp_path, '--experiment', 'nan', check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert 'Traceback' not in result.stderr
    assert lines[-1].startswith('train.py: error: training diverged at epoch 1, step ')
    assert 'loss is nan' in lines[-1] or 'loss is inf' in lines[-1] or 'no longer finite' in lines[-1]
    run = tmp_path / 'nan'
    assert f'last good checkpoint: {run / "last.pth.tar"}' in lines[-1]
    last = torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=True)
    epoch0 = torch.load(run / 'checkpoint-0.pth.tar', map_location='cpu', weights_only=True)
    assert last['epoch'] == 1 and all(torch.isfinite(v).all() for v in last['state_dict'].values())
    assert all(torch.equal(last['state_dict'][k], epoch0['state_dict'][k]) for k in epoch0['state_dict'])
