"""Every fast operator implementation equals its reference, forward and backward; dispatch behaves.

A new operator file layers/<op>.py adds tests/op_specs/<op>.py with its `SPECS` (and inherits every check below) and
engine/op_cases/<op>.py with its benchmark cases.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import set_layer_config

import layers
from engine.op_cases import benchmark_cases
from layers import KernelUnavailableError, dilated_dwconv2d, kernel_impl
from op_harness import LAYOUTS


def _collect_specs():
    specs = []
    for path in sorted((Path(__file__).parent / 'op_specs').glob('[!_]*.py')):
        specs += importlib.import_module(f'op_specs.{path.stem}').SPECS
    return specs


OP_SPECS = _collect_specs()

_CASES = [pytest.param(spec, impl, case, id=f'{spec.name}-{impl}-{i}')
          for spec in OP_SPECS for impl in spec.fast_impls for i, case in enumerate(spec.cases)]


def _run(fn, tensors, kwargs, **extra):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors, **kwargs, **extra)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, tensors, grad_out)
    return out, grads


@pytest.mark.parametrize('spec,impl,case', _CASES)
def test_fast_equals_reference_float64(spec, impl, case):
    tensors, kwargs = spec.make_inputs(case, torch.float64)
    ref_out, ref_grads = _run(spec.reference, tensors, kwargs)
    out, grads = _run(spec.op, tensors, kwargs, impl=impl)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize('spec,impl,case', _CASES)
def test_fast_equals_reference_float32(spec, impl, case):
    tensors, kwargs = spec.make_inputs(case, torch.float32)
    ref_out, ref_grads = _run(spec.reference, tensors, kwargs)
    out, grads = _run(spec.op, tensors, kwargs, impl=impl)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


# bfloat16 keeps 8 mantissa bits (relative step 2^-8 = 0.0039): a fast impl may differ from the reference by a few
# such steps of the output's scale, accumulated over its reductions; a wrong impl differs by O(1).
_BF16_TOL = 0.05


def _bf16_close(out, ref):
    scale = max(1.0, ref.double().abs().max().item())
    diff = (out.double() - ref.double()).abs().max().item()
    assert diff <= _BF16_TOL * scale, f'max |fast - reference| = {diff:.3g} > {_BF16_TOL} x {scale:.3g}'


@pytest.mark.parametrize('spec,impl,case', _CASES)
def test_fast_equals_reference_bfloat16(spec, impl, case):
    """The deployment form's regime: under bfloat16 autocast, and on bfloat16 tensors, the fast impl stays within a
    few bfloat16 steps of the reference run the same way (same rounding, so data-dependent choices such as BiFormer's
    top-k routing agree; against float32 they may flip on near-ties)."""
    tensors, kwargs = spec.make_inputs(case, torch.float32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        _bf16_close(spec.op(*tensors, **kwargs, impl=impl), spec.reference(*tensors, **kwargs))
    if spec.bfloat16_inputs:
        tensors, kwargs = spec.make_inputs(case, torch.bfloat16)
        with torch.no_grad():
            out = spec.op(*tensors, **kwargs, impl=impl)
            assert out.dtype == torch.bfloat16
            _bf16_close(out, spec.reference(*tensors, **kwargs))


@pytest.mark.parametrize('spec', OP_SPECS, ids=lambda s: s.name)
def test_reference_gradcheck(spec):
    tensors, kwargs = spec.make_inputs(spec.cases[1], torch.float64)
    tensors = [t.detach().requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(lambda *t: spec.reference(*t, **kwargs), tensors)


def _in_other_layout(tensors, layout):
    """The same values in the other memory layout a model hands over (see `op_harness.LAYOUTS`)."""
    if layout == 'nchw':
        return [t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t for t in tensors]
    return [t.transpose(-2, -1).contiguous().transpose(-2, -1) if t.ndim >= 2 else t for t in tensors]


@pytest.mark.parametrize('spec', OP_SPECS, ids=lambda s: s.name)
def test_impls_accept_the_layouts_models_hand_over(spec):
    assert spec.layout in LAYOUTS, f'{spec.name}: layout {spec.layout!r} is not one of {LAYOUTS}'
    changed = False
    for case in spec.cases:
        tensors, kwargs = spec.make_inputs(case, torch.float64)
        other = _in_other_layout(tensors, spec.layout)
        changed |= any(t.stride() != o.stride() for t, o in zip(tensors, other))
        ref = spec.reference(*tensors, **kwargs)
        ref_other = spec.reference(*other, **kwargs)
        torch.testing.assert_close(ref_other, ref, rtol=0, atol=1e-10)
        for impl in spec.fast_impls:
            out = spec.op(*other, **kwargs, impl=impl)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
            if spec.layout == 'nchw':
                assert out.is_contiguous(memory_format=torch.channels_last) == ref_other.is_contiguous(
                    memory_format=torch.channels_last), f'{impl} returns another memory format than the reference'
    assert changed, f'{spec.name}: no case has an input whose layout the test could change'


def test_dispatch_auto_picks_fast_when_usable(monkeypatch):
    calls = []
    import layers.large_kernel_conv as lkc
    monkeypatch.setitem(lkc._DWCONV_IMPLS, 'subgrid', (
        lambda *a: calls.append('subgrid') or lkc.dilated_dwconv2d_subgrid(*a), lkc._can_use_subgrid))
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, 7, 7)
    dilated_dwconv2d(x, w, None, 3)
    assert calls == ['subgrid']
    dilated_dwconv2d(x, w, None, 1)  # dilation 1: subgrid says no, reference runs
    assert calls == ['subgrid']
    with kernel_impl('reference'):
        dilated_dwconv2d(x, w, None, 3)
    assert calls == ['subgrid']
    with set_layer_config(exportable=True):
        dilated_dwconv2d(x, w, None, 3)
    assert calls == ['subgrid', 'subgrid'], 'exportable keeps the fast paths that trace exactly'


def test_not_preferred_impl_is_skipped_by_auto_but_runs_when_named():
    from layers import NotPreferred, resolve_impl, usable_impls
    table = {'slow': (lambda: 'slow', lambda: NotPreferred('measured slower here')), 'reference': (lambda: 'ref', None)}
    assert resolve_impl('op', table, 'auto')() == 'ref'
    assert resolve_impl('op', table, 'slow')() == 'slow'
    assert usable_impls(table) == {'slow': None, 'reference': None}


def test_named_impl_that_cannot_run_raises_with_reason():
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, 7, 7)
    with pytest.raises(KernelUnavailableError, match='subgrid.*dilation 1'):
        dilated_dwconv2d(x, w, None, 1, impl='subgrid')


def test_unknown_impl_names_raise():
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, 7, 7)
    with pytest.raises(ValueError, match="'triton'.*available"):
        dilated_dwconv2d(x, w, None, 3, impl='triton')
    with pytest.raises(ValueError, match="Unknown global kernel implementation 'fastest'"):
        layers.set_kernel_impl('fastest')
    assert layers.get_kernel_impl() == 'auto'


def test_kernel_impl_context_restores_and_env_var():
    with kernel_impl('reference'):
        assert layers.get_kernel_impl() == 'reference'
    assert layers.get_kernel_impl() == 'auto'
    env = dict(os.environ, ZOO_KERNEL_IMPL='reference')
    out = subprocess.run([sys.executable, '-c', 'import layers; print(layers.get_kernel_impl())'],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'reference'


def test_every_benchmark_case_runs_every_listed_impl():
    """Every `benchmark.py --ops` case, forward and forward+backward (whose result is the gradients), agrees with
    its reference within float32 rounding of the result's scale."""
    cases = benchmark_cases(batch_size=1)
    assert {c.op.split(' fwd+bwd')[0] for c in cases if c.op.endswith('fwd+bwd')} >= {
        'ska', 'routed_attention', 'hilo_attention', 'halo_attention', 'large_kernel_attention', 'contmix', 'na2d',
        'na2d_av', 'linear_attention (MALA)', 'gated_positional_attention', 'fourier_kan_attention', 'deform_conv2d',
        'reversed_attention', 'attention_with_cls_score', 'multi-rate attention core (FMViT)',
        'rep_conv2d (gMLP fc1)'}
    for case in cases:
        baseline = case.run(case.impls[0])
        for impl in case.impls[1:]:
            out = case.run(impl)
            if case.same_result:
                assert case.impls[0] == 'reference'
                scale = max(1., baseline.abs().max().item())
                torch.testing.assert_close(out, baseline, rtol=1e-4, atol=1e-4 * scale)
            else:
                assert out.shape == baseline.shape and torch.isfinite(out).all()


def test_flops_setting_selects_the_countable_implementation(monkeypatch):
    import layers.linear_attn as la
    calls = []
    monkeypatch.setitem(la._LINEAR_IMPLS, 'linear', (lambda *a: calls.append('linear') or la.linear_attention_linear(*a),
                                                     None))
    q = k = v = torch.randn(1, 1, 4, 8)
    with kernel_impl('flops'):
        la.linear_attention(q, k, v, 0.3)
        dilated_dwconv2d(torch.randn(1, 2, 9, 9), torch.randn(2, 1, 7, 7), None, 3)  # its reference counts right
    assert calls == ['linear']
    with kernel_impl('reference'):
        la.linear_attention(q, k, v, 0.3)
    assert calls == ['linear']


def test_every_operator_file_has_specs_and_benchmark_cases():
    root = Path(__file__).resolve().parents[1]
    operators = {p.stem for p in (root / 'layers').glob('*.py') if p.stem != 'config' and 'resolve_impl(' in p.read_text()}
    specs = {p.stem for p in (root / 'tests' / 'op_specs').glob('[!_]*.py')}
    cases = {p.stem for p in (root / 'engine' / 'op_cases').glob('[!_]*.py')}
    assert operators and specs == operators and cases == operators, (operators ^ specs, operators ^ cases)


def test_shape_tables_built_under_inference_mode_still_train():
    """Shape-only tables are cached; one first built under torch.inference_mode() must not be an inference tensor,
    or a later training forward could not save it for backward (GPSA offsets, RoPE tables, NA index tables)."""
    from layers.gpsa import relative_offsets_2d
    from layers.linear_attn import rope_2d
    from layers.neighborhood_attn import _dense_index, _window_tables
    with torch.inference_mode():
        tables = [relative_offsets_2d(5, 7), *rope_2d(3, 5, 8), *_window_tables(9, 11, 3, 5, 1, 1, torch.device('cpu')),
                  _dense_index(9, 11, 3, 5, 4, 4, torch.device('cpu'))]
    flat = []
    while tables:
        t = tables.pop()
        if isinstance(t, (tuple, list)):
            tables.extend(t)
        elif isinstance(t, torch.Tensor):
            flat.append(t)
    assert len(flat) >= 5 and not any(t.is_inference() for t in flat)
    weight = torch.ones(3, requires_grad=True)
    (relative_offsets_2d(5, 7) * weight).sum().backward()
    assert weight.grad is not None


def test_auto_picks_by_the_training_step_where_the_backward_differs():
    """Where a fast form's backward measured slower than the reference's (fused attention on small score matrices,
    HiLo's Hi-Fi windows, the sub-grid LKA conv on a 7x7 map), 'auto' takes the reference in a training forward and
    keeps the fast form in inference and where the backward pays (large score matrices)."""
    from layers import attention, gpsa, hilo_attn, large_kernel_conv, token_prune
    from layers.config import resolve_impl

    def qkv(n, m=None, d=32):
        return [torch.randn(2, 2, n, d), torch.randn(2, 2, m or n, d), torch.randn(2, 2, m or n, d)]

    layer = hilo_attn.HiLoAttention(64, 4, 2, alpha=0.5)
    hifi = tuple(p.detach().clone() for p in (layer.h_qkv.weight, layer.h_qkv.bias, layer.h_proj.weight,
                                              layer.h_proj.bias))
    lofi = tuple(p.detach().clone() for p in (layer.l_q.weight, layer.l_q.bias, layer.l_kv.weight, layer.l_kv.bias,
                                              layer.l_proj.weight, layer.l_proj.bias))
    cases = [
        ('softmax_attention', attention._SOFTMAX_IMPLS, qkv(196), 'sdpa'),
        ('gated_positional_attention', gpsa._IMPLS, qkv(196), 'sdpa'),
        ('attention_with_cls_score', token_prune._IMPLS, qkv(197, d=64) + [0.125], 'sdpa'),
        ('dilated_dwconv2d', large_kernel_conv._DWCONV_IMPLS,
         [torch.randn(2, 8, 7, 7), torch.randn(8, 1, 7, 7), torch.randn(8), 3], 'subgrid'),
        ('hilo_attention', hilo_attn._IMPLS, [torch.randn(2, 14, 14, 64), hifi, lofi], 'sdpa'),
    ]
    for name, table, args, fast in cases:
        assert resolve_impl(name, table, 'auto', *args) is table[fast][0], name
        trained = [a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        if name == 'hilo_attention':
            trained[1] = tuple(p.requires_grad_() for p in trained[1])
        assert resolve_impl(name, table, 'auto', *trained) is table['reference'][0], name
        with torch.no_grad():
            assert resolve_impl(name, table, 'auto', *trained) is table[fast][0], name
        assert resolve_impl(name, table, fast, *trained) is table[fast][0], name  # named, it still runs
    big = [t.requires_grad_() for t in qkv(784)]
    assert resolve_impl('softmax_attention', attention._SOFTMAX_IMPLS, 'auto', *big) is attention.softmax_attention_sdpa


def test_conv_norm_gemm_path_equals_the_convolution():
    """ConvNorm's 1x1 conv on a small channels-last map runs as a GEMM over the NHWC view: same values and gradients
    (float64) as the convolution, channels-last out; larger or NCHW maps keep the convolution."""
    from layers import conv_norm
    layer = conv_norm.ConvNorm(16, 24).double().eval()
    with torch.no_grad():
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 2.)
    for size, gemm in ((7, True), (14, True), (15, False)):
        x = torch.randn(2, 16, size, size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        out = layer(x)
        ref = layer.bn(torch.nn.functional.conv2d(x, layer.conv.weight))
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        grads = torch.autograd.grad(out.square().sum(), (x, layer.conv.weight))
        ref_grads = torch.autograd.grad(ref.square().sum(), (x, layer.conv.weight))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-10)
        assert out.is_contiguous(memory_format=torch.channels_last)
        calls = []
        original = conv_norm.F.linear
        conv_norm.F.linear = lambda *a: calls.append(1) or original(*a)
        try:
            layer(x.detach())
            layer(x.detach().contiguous())  # NCHW: the convolution
        finally:
            conv_norm.F.linear = original
        assert len(calls) == int(gemm)
