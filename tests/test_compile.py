"""torch.compile: the fast paths trace into one graph (no graph breaks), except where a shape depends on the data."""
import pytest
import timm
import torch
import torch._dynamo as dynamo

from conftest import CI_MODELS, input_size_for

# AS-ViT per-image pruning keeps a data-dependent number of tokens (`.item()` of the largest kept count per stage):
# dynamo must break there. prune_mode='none' (dense) traces whole.
_DATA_DEPENDENT = {'asvit_deit_tiny'}


def _graph_breaks(model, x):
    dynamo.reset()
    with torch.no_grad():
        explanation = dynamo.explain(model)(x)
    return explanation.graph_break_count, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_forward_traces_without_graph_breaks(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, *input_size_for(model, 64))
    count, reasons = _graph_breaks(model, x)
    if name in _DATA_DEPENDENT:
        assert count > 0 and all('item()' in r for r in reasons), reasons
        model = timm.create_model(name, prune_mode='none').eval()
        count, reasons = _graph_breaks(model, x)
    assert count == 0, reasons


@pytest.mark.parametrize('name', sorted(CI_MODELS))
def test_training_forward_traces_without_graph_breaks(name):
    """A training forward (autograd recording, train mode) takes other paths than inference: 'auto' picks by the
    training step, SKA runs its custom autograd function, AS-ViT trains with a soft policy instead of pruning.
    `train.py --torchcompile` gets one graph for every family."""
    model = timm.create_model(name).train()
    dynamo.reset()
    explanation = dynamo.explain(model)(torch.randn(2, *input_size_for(model, 64)))
    assert explanation.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]


def test_shape_tables_trace_under_compile_and_stay_cached_in_eager():
    """The shape-only tables (layers._shape_cache) are traced as constants under torch.compile; eagerly they are
    built once (even under inference mode) and reused."""
    from layers.gpsa import _offsets
    _offsets.cache_clear()
    cpu = torch.device('cpu')
    with torch.inference_mode():
        first = _offsets(5, 4, cpu, torch.float32)
    assert _offsets(5, 4, cpu, torch.float32) is first and not first.is_inference()
    dynamo.reset()
    compiled = torch.compile(lambda t: t + _offsets(5, 4, cpu, torch.float32).sum(), backend='eager', fullgraph=True)
    assert torch.equal(compiled(torch.zeros(())), first.sum())
