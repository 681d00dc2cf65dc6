"""HaloNet: our zoo_ models equal timm's (the reference implementation) with the same weights; the paper's
value-expanded blocks (H5-H7) have the construction the docstring derives."""
import pytest
import timm
import torch

from detweights import fill_tensor

# ours -> timm's own registration of the same architecture
TIMM_TWINS = {
    'zoo_halonet26t': 'halonet26t',
    'zoo_eca_halonext26ts': 'eca_halonext26ts',
    'zoo_haloregnetz_b': 'haloregnetz_b',
    'zoo_sehalonet33ts': 'sehalonet33ts',
    'zoo_halonet50ts': 'halonet50ts',
    'zoo_halo2botnet50ts_256': 'halo2botnet50ts_256',
    'zoo_lamhalobotnet50ts_256': 'lamhalobotnet50ts_256',
    'zoo_halonet_h1': 'halonet_h1',
}
# in CI: the fixture's halo setting (strided queries), grouped convs + dim_head, and the avg-pool stride path
_CI_TWINS = ('zoo_halonet26t', 'zoo_eca_halonext26ts', 'zoo_haloregnetz_b')


def _filled_state_dict(model):
    return {k: fill_tensor(k, v.shape) if v.dtype.is_floating_point else v for k, v in model.state_dict().items()}


@pytest.mark.parametrize('ours', [pytest.param(n, marks=() if n in _CI_TWINS else pytest.mark.slow) for n in TIMM_TWINS])
def test_equals_timm_with_the_same_weights(ours):
    theirs = timm.create_model(TIMM_TWINS[ours], dtype=torch.float64).eval()
    theirs.load_state_dict(_filled_state_dict(theirs))
    model = timm.create_model(ours, pretrained=True, pretrained_cfg_overlay=dict(state_dict=theirs.state_dict()),
                              dtype=torch.float64).eval()
    x = torch.randn(2, *model.pretrained_cfg['input_size'], dtype=torch.float64)
    with torch.no_grad():
        expected = theirs(x)
        for impl in ('reference', 'auto'):
            model.set_grad_checkpointing(False)
            for m in model.modules():
                if hasattr(m, 'kernel_impl'):
                    m.kernel_impl = impl
            torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-9 * expected.abs().max().item())


def test_value_expanded_attention_widens_only_the_values():
    with torch.device('meta'):
        model = timm.create_model('zoo_halonet_h5')
    block = model.stages[2][0]  # stage 3: base width 256, rv 2.5, rb 2 -> out 512
    attn = block.self_attn
    assert block.conv1_1x1.conv.weight.shape == (256, 256, 1, 1)  # in: stage-2 output 256 (= 128 * rb)
    assert attn.q.weight.shape == (256, 256, 1, 1)
    assert attn.kv.weight.shape == (256 + 640, 256, 1, 1)  # k: 256, v: 2.5 * 256
    assert attn.dim_head_qk == 32 and attn.dim_head_v == 80
    assert block.post_attn.weight.shape == (640,) and block.conv3_1x1.conv.weight.shape == (512, 640, 1, 1)
    assert attn.block_size == 14 and attn.halo_size == 2 and attn.block_stride == 2
    assert model.num_features == 1536 and model.final_conv.conv.weight.shape == (1536, 1024, 1, 1)


def test_value_expanded_block_runs_and_trains():
    model = timm.create_model('zoo_halonet_h6', drop_path_rate=0.1)
    model.stages = model.stages[:2]  # the first two stages are enough to exercise the block; keep CI cheap
    model.final_conv = torch.nn.Identity()
    model.reset_classifier(10)
    model.head.fc = torch.nn.Linear(model.stages[-1][-1].conv3_1x1.conv.out_channels, 10)
    x = torch.randn(2, 3, 64, 72)
    out = model.forward_head(model.stages(model.stem(x)))
    out.sum().backward()
    assert out.shape == (2, 10) and all(p.grad is not None for p in model.stages.parameters())


@pytest.mark.slow
def test_h7_runs_at_its_published_600_resolution():
    """H7's 75 x 75 stage-3 map is not divisible by its block size 10: the halo layer pads it (timm raises)."""
    model = timm.create_model('zoo_halonet_h7').eval()
    assert model.pretrained_cfg['input_size'] == (3, 600, 600)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 600, 600))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
