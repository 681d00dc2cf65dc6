"""train.py and eval.py end to end, on the embedded digits data (no network): resume exactness after SIGKILL,
2-process equivalence, webdataset and image-folder input, bad configs, corrupt images and checkpoints."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import backbones  # noqa: F401
from engine.data import DigitsDataset, export_image_folder, export_webdataset

ROOT = Path(__file__).resolve().parents[1]
# Small and quick, but with every source of randomness on: RandAugment, random erasing, mixup/cutmix,
# drop path and EMA, so exact resumption really has to restore all of them.
SMALL_RUN = [
    '--model', 'van_b0', '--dataset', 'digits', '--digits-size', '32', '--img-size', '32', '--crop-pct', '1.0',
    '--batch-size', '16', '--epochs', '2', '--warmup-epochs', '1', '--lr', '1e-3', '--max-steps-per-epoch', '6',
    '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25', '--mixup', '0.8', '--cutmix', '1.0', '--drop-path', '0.1',
    '--model-ema', '--model-ema-decay', '0.9', '--workers', '0', '--threads', '1', '--device', 'cpu',
]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')


def _run(script, *args, check=True, timeout=600):
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_state(a, b):
    for key in ('state_dict', 'state_dict_ema'):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name} differs'
    assert a['num_updates'] == b['num_updates']


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_resume_after_sigkill_is_exact(tmp_path):
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    _run('train.py', *SMALL_RUN, '--output', tmp_path, '--experiment', 'straight')

    # the command a preemptible scheduler restarts: it names its run, so a restart continues it
    command = [*SMALL_RUN, '--output', str(tmp_path), '--experiment', 'killed', '--checkpoint-interval', '1']
    args = [sys.executable, str(ROOT / 'train.py'), *command]
    process = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps = killed / 'steps.jsonl'
    deadline = time.time() + 300
    # kill part-way through the second epoch
    while time.time() < deadline and process.poll() is None:
        if steps.exists() and len(steps.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert process.poll() is None, 'the run finished before it could be killed'
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = _weights(killed / 'last.pth.tar')
    assert (interrupted['epoch'], interrupted['num_updates']) < (2, 12), 'nothing left to resume'

    resumed = _run('train.py', *command)
    assert 'Resumed from' in resumed.stdout
    _assert_same_state(_weights(straight / 'last.pth.tar'), _weights(killed / 'last.pth.tar'))
    # the epoch checkpoints and best are kept as well
    assert (killed / 'model_best.pth.tar').exists() and (killed / 'checkpoint-1.pth.tar').exists()


def test_two_processes_match_one(tmp_path):
    common = ['--model', 'test_vit', '--model-kwargs', 'img_size=32', 'patch_size=8', '--dataset', 'digits',
              '--digits-size', '32', '--img-size', '32', '--crop-pct', '1.0', '--epochs', '1', '--warmup-epochs', '0',
              '--lr', '1e-3', '--max-steps-per-epoch', '4', '--smoothing', '0', '--aa', 'rand-m9-mstd0.5',
              '--workers', '0', '--threads', '1', '--device', 'cpu']
    _run('train.py', *common, '--batch-size', '16', '--output', tmp_path, '--experiment', 'one')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
         str(ROOT / 'train.py'), *common, '--batch-size', '8', '--output', str(tmp_path), '--experiment', 'two'],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = [r['loss'] for r in _read_jsonl(tmp_path / 'one' / 'steps.jsonl')]
    two = [r['loss'] for r in _read_jsonl(tmp_path / 'two' / 'steps.jsonl')]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (one, two)


def test_embedded_default_learns(tmp_path):
    """The README's main job, shortened: well above the 10% chance level after two short epochs."""
    _run('train.py', '--config', ROOT / 'configs/demo/van_b0_digits.yaml', '--epochs', '2', '--digits-size', '32',
         '--img-size', '32', '--threads', '2', '--output', tmp_path, '--experiment', 'run')
    record = _read_jsonl(tmp_path / 'run' / 'metrics.jsonl')[-1]
    assert record['eval_top1'] > 40, record
    _run('eval.py', '--model', 'van_b0', '--checkpoint', tmp_path / 'run' / 'model_best.pth.tar',
                  '--dataset', 'digits', '--digits-size', '32', '--img-size', '32', '--crop-pct', '1.0',
                  '--workers', '0', '--results-file', tmp_path / 'eval.json')
    evaluated = json.loads((tmp_path / 'eval.json').read_text())
    assert abs(evaluated['top1'] - record['eval_top1']) < 1e-6 and evaluated['samples'] == 360


def test_webdataset_train_and_eval(tmp_path):
    train_shards = export_webdataset(DigitsDataset('train', 32), str(tmp_path / 'train-%03d.tar'), 400)
    val_shards = export_webdataset(DigitsDataset('val', 32), str(tmp_path / 'val-%03d.tar'), 200)
    assert len(train_shards) == 4 and len(val_shards) == 2
    pattern = str(tmp_path / 'train-{000..003}.tar')
    _run('train.py', '--model', 'van_b0', '--dataset', 'wds', '--train-shards', pattern, '--train-num-samples', 1437,
         '--val-shards', str(tmp_path / 'val-{000..001}.tar'), '--val-num-samples', 360, '--num-classes', 10,
         '--img-size', '32', '--crop-pct', '1.0', '--batch-size', 16, '--epochs', 1, '--max-steps-per-epoch', 4,
         '--workers', 2, '--threads', 1, '--device', 'cpu', '--output', tmp_path, '--experiment', 'run')
    record = _read_jsonl(tmp_path / 'run' / 'metrics.jsonl')[-1]
    assert 'eval_top1' in record and len(_read_jsonl(tmp_path / 'run' / 'steps.jsonl')) == 4
    _run('eval.py', '--model', 'van_b0', '--checkpoint', tmp_path / 'run' / 'last.pth.tar', '--dataset', 'wds',
         '--shards', str(tmp_path / 'val-{000..001}.tar'), '--num-samples', 360, '--img-size', 32,
         '--crop-pct', '1.0', '--workers', 0, '--results-file', tmp_path / 'eval.json')
    assert json.loads((tmp_path / 'eval.json').read_text())['samples'] == 360


def test_bad_config_is_rejected_naming_the_key(tmp_path):
    config = tmp_path / 'bad.yaml'
    config.write_text('model: van_b0\nepochz: 3\n')
    result = _run('train.py', '--config', config, check=False)
    assert result.returncode == 2 and "unknown key(s) 'epochz' (did you mean 'epochs'?)" in result.stderr
    config.write_text('model: van_b0\nepochs: many\n')
    result = _run('train.py', '--config', config, check=False)
    assert result.returncode == 2 and "config key 'epochs': 'many' is not a valid int" in result.stderr
    config.write_text('model: van_b0\nsched: sideways\nmixup_mode: diagonal\n')
    result = _run('train.py', '--config', config, check=False)
    assert result.returncode == 2 and "'diagonal' is not one of" in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.fixture(scope='module')
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('digits')
    dataset = DigitsDataset('val', 32)
    dataset.indices = dataset.indices[:40]
    export_image_folder(dataset, root / 'val')
    return root / 'val'


def test_corrupt_image_is_named_or_skipped(digits_folder, tmp_path):
    bad = digits_folder / '3' / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    try:
        common = ['--model', 'van_b0', '--num-classes', 10, '--data-dir', digits_folder, '--img-size', 32,
                  '--batch-size', 8]
        result = _run('eval.py', *common, '--workers', 2, check=False)
        assert result.returncode == 2 and f'Cannot read image {bad}' in result.stderr, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr
        _run('eval.py', *common, '--workers', 0, '--skip-bad', '--results-file', tmp_path / 'r.json')
        record = json.loads((tmp_path / 'r.json').read_text())
        assert record['skipped'] == 1 and record['samples'] == 40
    finally:
        bad.unlink()


def test_bad_checkpoint_files_are_named(tmp_path):
    garbage = tmp_path / 'notes.pth'
    garbage.write_text('this is not a checkpoint')
    result = _run('eval.py', '--model', 'van_b0', '--checkpoint', garbage, '--dataset', 'digits', check=False)
    assert result.returncode == 2 and f'{garbage} is not a readable PyTorch checkpoint' in result.stderr
    truncated = tmp_path / 'truncated.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    result = _run('eval.py', '--model', 'van_b0', '--checkpoint', truncated, '--dataset', 'digits', check=False)
    assert result.returncode == 2 and f'{truncated} is not a readable PyTorch checkpoint' in result.stderr
    result = _run('eval.py', '--model', 'van_b99', '--dataset', 'digits', check=False)
    assert result.returncode == 2 and "Unknown model 'van_b99'; did you mean van_b" in result.stderr


def test_single_image_top5_has_imagenet_names(tmp_path):
    from PIL import Image
    image = tmp_path / 'red.png'
    Image.new('RGB', (50, 40), (200, 10, 10)).save(image)
    result = _run('eval.py', '--model', 'van_b0', '--image', image, '--results-file', tmp_path / 'r.json')
    top5 = json.loads((tmp_path / 'r.json').read_text())['images'][0]['top5']
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    assert len(top5) == 5 and all(t['label'] == info.index_to_description(t['index']) for t in top5)
    assert top5[0]['label'] in result.stdout


def test_distillation_amp_accumulation_and_wandb_paths_run(tmp_path):
    """The recipe features not exercised above: DeiT-style distillation from a teacher checkpoint, bfloat16
    autocast on CPU, channels_last, gradient accumulation with clipping, repeated augmentation, offline wandb."""
    teacher = timm.create_model('van_b0', num_classes=10)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    result = _run('train.py', '--model', 'van_b0', '--dataset', 'digits', '--digits-size', 32, '--img-size', 32,
                  '--crop-pct', '1.0', '--batch-size', 8, '--epochs', 1, '--max-steps-per-epoch', 4,
                  '--distill-type', 'soft', '--distill-model', 'van_b0', '--distill-checkpoint', tmp_path / 'teacher.pth',
                  '--distill-alpha', 0.5, '--distill-tau', 2.0, '--amp', '--channels-last', '--grad-accum-steps', 2,
                  '--clip-grad', 1.0, '--aug-repeats', 3, '--log-wandb', '--workers', 0, '--threads', 1,
                  '--output', tmp_path, '--experiment', 'run')
    steps = _read_jsonl(tmp_path / 'run' / 'steps.jsonl')
    assert len(steps) == 4 and steps[-1]['num_updates'] == 2
    assert (tmp_path / 'run' / 'wandb').is_dir(), result.stdout[-2000:]


def test_eval_on_a_dataset_root_with_split(tmp_path):
    """timm's validate.py habits: DIR is the data set root and --split picks <root>/<split> (default val); a folder
    whose sub-folders are splits is never scored as classes."""
    root = tmp_path / 'imagenet'
    for split, count in (('train', 12), ('val', 8)):
        dataset = DigitsDataset(split, 32)
        dataset.indices = [i for i in dataset.indices if dataset.targets[i] < 2][:count]
        export_image_folder(dataset, root / split)
    common = ['--model', 'van_b0', '--num-classes', 2, '--img-size', 32, '--crop-pct', 1.0, '--workers', 0]
    _run('eval.py', root, *common, '--results-file', tmp_path / 'val.csv')
    with open(tmp_path / 'val.csv', newline='') as f:  # timm's default results format: one csv row
        row, = list(csv.DictReader(f))
    assert row['model'] == 'van_b0' and row['samples'] == '8'
    _run('eval.py', '--data-dir', root, '--split', 'train', *common, '--results-file', tmp_path / 'train.json')
    assert json.loads((tmp_path / 'train.json').read_text())['samples'] == 12
    result = _run('eval.py', root, '--split', 'test', *common, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert f'Image folder {root} holds data set splits (train, val), not classes' in result.stderr
