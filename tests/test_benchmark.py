"""benchmark.py and the FLOP counter: hand-counted attention, VAN's published FLOPs, CLI output and errors."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn

from engine.deploy import native_low_precision
from engine.profile import count_flops
from layers.flops import flop_count

ROOT = Path(__file__).resolve().parents[1]


class TinyAttention(nn.Module):
    def __init__(self, dim=64, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def test_attention_block_count_equals_hand_count():
    B, N, C, heads = 2, 49, 64, 2
    d = C // heads
    block = TinyAttention(C, heads).eval()
    x = torch.randn(B, N, C)
    hand = B * N * C * 3 * C + B * heads * N * N * (d + d) + B * N * C * C  # qkv, QK^T + AV, proj
    total, by_op, unsupported = flop_count(block, x)
    assert total == hand
    assert by_op['scaled_dot_product_attention'] == B * heads * N * N * 2 * d
    assert 'aten::scaled_dot_product_attention' not in unsupported
    # plain fvcore misses the attention core entirely: the handle is what makes the count right
    plain = FlopCountAnalysis(block, (x,))
    plain.unsupported_ops_warnings(False)
    assert plain.total() == hand - B * heads * N * N * 2 * d


@pytest.mark.parametrize('name,published_gmacs', [('van_b0', 0.88), ('van_b1', 2.52)])
def test_van_flops_match_published(name, published_gmacs):
    """OpenMMLab's counts of the official files (docs/van.md): fvcore counts MACs, as they do."""
    model = timm.create_model(name)
    macs = count_flops(model, (3, 224, 224))['macs'] / 1e9
    assert abs(macs - published_gmacs) / published_gmacs < 0.03, macs


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / 'benchmark.py'), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_model_benchmark_json_and_csv(tmp_path):
    result = _run('van_b0', '--batch-sizes', 1, 2, '--iters', 2, '--warmup', 1, '--img-size', 64, '--compare-impl',
                  '--json', tmp_path / 'out.json', '--csv', tmp_path / 'out.csv')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / 'out.json').read_text())
    assert [r['batch_size'] for r in rows] == [1, 2]
    for row in rows:
        assert row['model'] == 'van_b0' and row['params'] == 4_105_800 and row['input_size'] == '3x64x64'
        assert row['gmacs'] > 0 and row['img_per_s'] > 0 and row['ref_img_per_s'] > 0 and row['fast_vs_reference'] > 0
        # efficiency: the model's FLOP rate against the GEMM rate measured in the same run
        assert row['gemm_gflops_per_s'] > 1 and row['gemm_gflops_per_s'] == rows[0]['gemm_gflops_per_s']
        assert row['achieved_gflops_per_s'] == pytest.approx(row['gflops'] * row['img_per_s'])
        assert row['efficiency_pct'] == pytest.approx(100 * row['achieved_gflops_per_s'] / row['gemm_gflops_per_s'])
    assert (tmp_path / 'out.csv').read_text().splitlines()[0].startswith('model,params')
    assert 'fast/ref' in result.stdout and '% GEMM' in result.stdout and 'GEMM rate' in result.stdout


def test_ops_benchmark_prints_side_by_side(tmp_path):
    result = _run('--ops', '--ops-filter', 'dilated_dwconv2d', '--ops-max-cases', 1, '--iters', 2, '--warmup', 1,
                  '--batch-sizes', 2, '--json', tmp_path / 'ops.json')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / 'ops.json').read_text())
    assert [r['impl'] for r in rows] == ['reference', 'subgrid'] and rows[0]['speedup'] == 1.0
    assert rows[1]['max_abs_diff'] < 1e-4 and 'subgrid' in result.stdout


def test_ops_benchmark_times_training_steps(tmp_path):
    """`--ops-filter fwd+bwd`: an operator's training step per implementation, its gradients checked against the
    reference's."""
    result = _run('--ops', '--ops-filter', 'ska fwd+bwd', '--ops-max-cases', 1, '--iters', 2, '--warmup', 1,
                  '--batch-sizes', 2, '--json', tmp_path / 'ops.json')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / 'ops.json').read_text())
    assert [(r['op'], r['impl']) for r in rows] == [('ska fwd+bwd', 'reference'), ('ska fwd+bwd', 'shift')]
    assert rows[1]['max_abs_diff'] < 1e-4 and rows[1]['ms'] > 0


def test_unknown_model_is_a_clear_error():
    result = _run('van_b99')
    assert result.returncode == 2 and "Unknown model 'van_b99'" in result.stderr and 'Traceback' not in result.stderr
    assert 'did you mean van_b' in result.stderr  # the CLIs list close matches
    result = _run('nothing_like_this*')
    assert result.returncode == 2 and 'nothing_like_this*' in result.stderr


def test_compare_kwargs_on_real_photos_with_calibrated_pruning(tmp_path):
    result = _run('asvit_deit_tiny', '--real-images', '--calibrate', '--compare-kwargs', 'prune_mode=none',
                  '--batch-sizes', 2, '--iters', 2, '--warmup', 1, '--no-flops', '--json', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / 'out.json').read_text())[0]
    assert row['other_kwargs'] == 'prune_mode=none' and row['model_vs_other'] > 0


def test_sample_photos_are_real_images():
    from engine.profile import sample_photos
    x = sample_photos(3, (3, 224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 3, 224, 224) and -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.2
    assert not torch.equal(x[0], x[2])  # different crops of the same photo


def test_compare_model_against_timm_with_the_same_weights(tmp_path):
    result = _run('zoo_convit_tiny', '--compare-model', 'convit_tiny', '--batch-sizes', 1, '--iters', 2,
                  '--warmup', 1, '--no-flops', '--json', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads((tmp_path / 'out.json').read_text())[0]
    assert row['rival'] == 'convit_tiny' and row['model_vs_rival'] > 0
    result = _run('zoo_convit_tiny', '--compare-model', 'van_b0', '--batch-sizes', 1, '--iters', 1, '--no-flops')
    assert result.returncode == 2 and 'cannot hold the weights' in result.stderr


def test_deploy_form_against_another_architecture(tmp_path):
    # --compare-impl too: its reference copy loads the training-form weights, then is deployed like the model
    result = _run('fmvit_t', '--deploy', '--compare-arch', 'mobileone_s1', '--compare-impl', '--batch-sizes', 1,
                  '--iters', 2, '--warmup', 1, '--json', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'deployed (re-parameterized)' in result.stdout
    row = json.loads((tmp_path / 'out.json').read_text())[0]
    # the deployed count: the branches and Conv-BNs are merged (training form: 7,408,944)
    assert row['params'] == 4_892_976 and abs(row['gmacs'] - 0.8427) < 1e-3
    assert row['arch'] == 'mobileone_s1' and row['model_vs_arch'] > 0 and row['fast_vs_reference'] > 0


def test_timm_flag_names(tmp_path):
    """timm's benchmark.py spelling: --model (no prefix match with --model-kwargs), -b, --bench both,
    --num-warm-iter/--num-bench-iter, --amp, --reparam, --results-file with its format from the name."""
    result = _run('--model', 'test_vit', '--model-kwargs', 'img_size=(32, 32)', 'patch_size=8', '-b', 2,
                  '--bench', 'both', '--num-warm-iter', 1, '--num-bench-iter', 1, '--amp', '--reparam',
                  '--no-flops', '--img-size', 32, '--results-file', tmp_path / 'out.csv')
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / 'out.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    # --amp autocasts only where the CPU computes bfloat16 natively, and says so where it does not
    amp = 'bfloat16' if native_low_precision('cpu') is torch.bfloat16 else 'float32'
    assert [(r['model'], r['mode'], r['batch_size'], r['dtype']) for r in rows] == [
        ('test_vit', 'infer', '2', amp), ('test_vit', 'train', '2', amp)]
    assert ('--amp ignored' in result.stdout) == (amp == 'float32')
    assert rows[0]['input_size'] == '3x32x32' and 'deployed (re-parameterized)' in result.stdout
    result = _run('-m', 'test_vit', '--img-size', 160, '--bench', 'profile', '--results-file', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    row, = json.loads((tmp_path / 'out.json').read_text())
    assert row['model'] == 'test_vit' and row['gmacs'] > 0 and 'img_per_s' not in row
    result = _run('--model-kwargs', 'van_b0')
    assert result.returncode == 2 and "expected key=value, got 'van_b0'" in result.stderr


def _largest_activation_mib(model, x):
    largest = [0]

    def record(module, args, out):
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if torch.is_tensor(t):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return largest[0] / 2 ** 20


@pytest.mark.parametrize('name', ['asvit_deit_tiny', 'zoo_convit_tiny', 'lsnet_t', 'karat_vit_tiny_g3b',
                                  'dependencyvit_tiny', 'fmvit_t'])
def test_cpu_peak_memory_covers_the_largest_activation(name):
    """These six read 0 MiB from the resident set (freed memory is reused); the profiler's allocation events
    see every tensor a call holds: the reported peak is at least the largest single activation."""
    from engine.profile import time_model
    model = timm.create_model(name).eval()
    input_size = model.pretrained_cfg['input_size']
    torch.manual_seed(0)
    x = torch.randn(1, *input_size)
    timed = time_model(model, 1, input_size, torch.device('cpu'), iters=1, warmup=0, inputs=x)
    peak = timed['model']['peak_mem_mib']
    largest = _largest_activation_mib(model, x)
    assert peak >= largest > 0, (peak, largest)


def test_compare_deploy_times_the_deployment_form(tmp_path):
    result = _run('lsnet_t', '--compare-deploy', '--batch-sizes', 1, '--iters', 1, '--warmup', 1, '--no-flops',
                  '--img-size', 64, '--json', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    row, = json.loads((tmp_path / 'out.json').read_text())
    assert row['deployed_img_per_s'] > 0
    assert row['deployed_vs_model'] == pytest.approx(row['deployed_img_per_s'] / row['img_per_s'])
    assert 'deployed/model' in result.stdout


def test_compare_compile_times_the_compiled_model(tmp_path):
    result = _run('-m', 'test_vit', '--model-kwargs', 'img_size=(32, 32)', 'patch_size=8', '--img-size', 32, '-b', 2,
                  '--iters', 1, '--warmup', 1, '--no-flops', '--compare-compile', '--json', tmp_path / 'out.json')
    assert result.returncode == 0, result.stderr[-2000:]
    row, = json.loads((tmp_path / 'out.json').read_text())
    assert row['compiled_img_per_s'] > 0
    assert row['compiled_vs_eager'] == pytest.approx(row['compiled_img_per_s'] / row['img_per_s'])
    assert 'compiled/eager' in result.stdout
