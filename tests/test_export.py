"""Deployment paths a timm user takes: ONNX (TorchScript-based and dynamo exporters), torch.export, TorchScript and
fvcore called directly. Each family's CI model runs in the default suite, every model under `-m slow`.
TorchScript compiles ConViT and HaloNet (as timm's twins do); every other family refuses it with one clear error.

Every exported graph is run (onnxruntime for ONNX) on the export input and on a second input, and compared with
the eager float32 model within 1e-4 x max(1, max|logit|): the second input catches graphs specialised to the data.
"""
import io
import warnings

import pytest
import timm
import torch
from torch import nn

import layers
from backbones._helpers import SCRIPTABLE_FAMILIES
from conftest import CI_MODELS, input_size_for, model_family, model_params

ort = pytest.importorskip('onnxruntime')

EXPORT_SIZE = 128  # where the model takes it: export cost grows with the graph, not the input
# family modules whose model class is in SCRIPTABLE_FAMILIES (timm's twins of these script)
SCRIPTING_FAMILIES = ('convit', 'halonet')


def _model(name: str, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    for module in model.modules():
        # zero-initialised classifiers give all-zero logits, which would compare trivially
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    c, h, w = input_size_for(model, EXPORT_SIZE)
    x, x2 = torch.randn(2, c, h, w), torch.randn(2, c, h, w)
    if hasattr(model, 'calibrate_thresholds'):  # AS-ViT: thresholds that prune, so that the export prunes too
        with torch.no_grad():
            model.calibrate_thresholds(torch.cat([x, x2]))
    return model, x, x2


def _assert_close(out: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = 1e-4) -> float:
    """Assert max |out - ref| <= rtol x max(1, max|ref|); print that ratio (with -rA: the README's table)."""
    assert out.shape == ref.shape, f'{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}'
    ratio = (out - ref).abs().max().item() / max(1.0, ref.abs().max().item())
    assert ratio <= rtol, f'{what}: max |diff| / max(1, max|logit|) = {ratio:.3g} > {rtol:.0e}'
    print(f'{what}: max |diff| / max(1, max|logit|) = {ratio:.2g}')
    return ratio


def _run_onnx(data: bytes, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _eager(model, *inputs):
    with torch.no_grad():
        return [model(x) for x in inputs]


@pytest.mark.parametrize('name', model_params())
def test_onnx_torchscript_exporter(name):
    """What timm's onnx_export.py does: create_model(exportable=True), then the TorchScript-based exporter."""
    model, x, x2 = _model(name, exportable=True)
    assert model.exportable  # kept after the build
    ref, ref2 = _eager(model, x, x2)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, x, f, dynamo=False)
    _assert_close(_run_onnx(f.getvalue(), x), ref, f'{name} onnx (TorchScript exporter)')
    _assert_close(_run_onnx(f.getvalue(), x2), ref2, f'{name} onnx (TorchScript exporter), second input')


@pytest.mark.parametrize('name', model_params())
def test_torch_export_and_onnx_dynamo(name, tmp_path):
    """torch.export.export of the default model, and the dynamo-based ONNX exporter (on the same exported program,
    which is what torch.onnx.export(model, (x,), dynamo=True) exports after its own torch.export step)."""
    model, x, x2 = _model(name)
    ref, ref2 = _eager(model, x, x2)
    program = torch.export.export(model, (x,))
    out, out2 = _eager(program.module(), x, x2)
    _assert_close(out, ref, f'{name} torch.export')
    _assert_close(out2, ref2, f'{name} torch.export, second input')
    onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    onnx_program.save(str(tmp_path / 'model.onnx'))
    data = (tmp_path / 'model.onnx').read_bytes()
    _assert_close(_run_onnx(data, x), ref, f'{name} onnx (dynamo exporter)')
    _assert_close(_run_onnx(data, x2), ref2, f'{name} onnx (dynamo exporter), second input')


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_onnx_dynamo_from_the_module(name, tmp_path):
    """The literal user call: torch.onnx.export(model, (x,), dynamo=True)."""
    model, x, _ = _model(name)
    ref, = _eager(model, x)
    onnx_program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    onnx_program.save(str(tmp_path / 'model.onnx'))
    _assert_close(_run_onnx((tmp_path / 'model.onnx').read_bytes(), x), ref, f'{name} onnx (dynamo exporter)')


def test_asvit_batch_topk_names_why_it_cannot_export():
    model, x, _ = _model('asvit_deit_tiny', prune_mode='batch_topk')
    with pytest.raises(RuntimeError, match="prune_mode='batch_topk' cannot be exported.*'per_image'"):
        torch.export.export(model, (x,))


def test_exportable_is_kept_for_the_model_lifetime():
    """timm applies exportable only while building; the model keeps it, and 'auto' then skips untraceable impls."""
    chosen = []

    @layers.untraceable('test: data-dependent sizes')
    def fast(x):
        chosen.append('fast')
        return x

    def reference(x):
        chosen.append('reference')
        return x

    impls = {'fast': (fast, None), 'reference': (reference, None)}

    class Probe(nn.Module):
        def forward(self, x):
            return layers.resolve_impl('probe', impls, None, x)(x)

    model = timm.create_model('van_b0', exportable=True).eval()
    model.head.fc = Probe()
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        model.exportable = False
        model(x)
    assert chosen == ['reference', 'fast'] and not layers.traceable_only()


@pytest.mark.parametrize('name', [p for p in model_params() if model_family(p.values[0]) in SCRIPTING_FAMILIES])
def test_torchscript(name):
    """torch.jit.script(create_model(name, scriptable=True)) for the families whose timm twins script; the scripted
    module, also after a save/load round trip, gives the eager outputs."""
    model, x, x2 = _model(name, scriptable=True)
    assert type(model).__name__ in SCRIPTABLE_FAMILIES
    ref, ref2 = _eager(model, x, x2)
    hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scripted = torch.jit.script(model)
    # TorchScript compiled a copy without the layer-config hooks: the eager model keeps them
    assert hooks[0] and (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks and model.scriptable
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    out, out2 = _eager(loaded, x, x2)
    _assert_close(out, ref, f'{name} TorchScript', rtol=1e-5)
    _assert_close(out2, ref2, f'{name} TorchScript, second input', rtol=1e-5)


@pytest.mark.parametrize('name', sorted(n for n in CI_MODELS if model_family(n) in SCRIPTING_FAMILIES))
def test_torchscript_runs_the_named_kernel(name):
    """A model built with kernel_impl='reference' scripts with the reference kernels (its eager outputs, and not
    those of the fast kernel the scripted forward runs otherwise)."""
    model, x, _ = _model(name, scriptable=True, kernel_impl='reference')
    ref, = _eager(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.script(model)
        scripted = torch.jit.script(model)  # a model scripts as often as asked
    out, = _eager(scripted, x)
    assert torch.equal(out, ref), f'{name}: scripted reference differs by {(out - ref).abs().max().item():.3g}'


@pytest.mark.parametrize('name', sorted(n for n in CI_MODELS if model_family(n) not in SCRIPTING_FAMILIES))
def test_torchscript_refusal_names_why_and_the_alternatives(name):
    model = timm.create_model(name, scriptable=True)
    assert type(model).__name__ not in SCRIPTABLE_FAMILIES
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(RuntimeError, match=r'does not support TorchScript.*torch\.export.*torch\.onnx\.export'):
            torch.jit.script(model)


@pytest.mark.parametrize('name', model_params())
def test_fvcore_direct_equals_benchmark_count(name):
    """A user's own FlopCountAnalysis with layers.fvcore_handles() counts what benchmark.py counts."""
    from fvcore.nn import FlopCountAnalysis
    from engine.profile import count_flops
    model = timm.create_model(name).eval()
    input_size = model.pretrained_cfg['input_size']
    torch.manual_seed(0)
    x = torch.randn(1, *input_size)
    expected = count_flops(model, input_size, inputs=x)['macs']
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        plain = FlopCountAnalysis(model, x)  # without our handles: must not crash
        plain.unsupported_ops_warnings(False)
        plain.uncalled_modules_warnings(False)
        assert plain.total() > 0
        analysis = FlopCountAnalysis(model, x).set_op_handle(**layers.fvcore_handles())
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = analysis.total()
    assert total == expected
    print(f'{name} fvcore direct: {total} MACs, benchmark.py {expected}: relative difference '
          f'{abs(total - expected) / expected:.2g}')
