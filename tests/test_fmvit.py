"""FMViT (reconstruction) specifics: re-parameterized branches and deploy form, multi-rate attention by hand,
block composition, sizing against the published operating points, checkpoints."""

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model

import layers
from backbones._helpers import CheckpointMismatchError
from engine.profile import count_flops, count_params
from backbones.fmvit import ConvFusionBlock, FrequencyMixingBlock, MultiGroupMlp
from layers import MultiRateAttention, RepConvNorm


def _randomize_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affines (zero-gamma init would hide half of every residual branch)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


def test_rep_conv_eval_equals_its_conv_bn_branches():
    module = _randomize_norms(RepConvNorm(8, 8, ((3, 2), (1, 2)), identity=True)).double().eval()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    by_branch = sum(branch(x) for branch in module.branches) + module.identity(x)
    for impl in ('reference', 'merged'):
        module.kernel_impl = impl
        torch.testing.assert_close(module(x), by_branch, rtol=0, atol=1e-12)
    fused = module.fuse()
    assert isinstance(fused, torch.nn.Conv2d) and fused.groups == 2 and fused.kernel_size == (3, 3)
    torch.testing.assert_close(fused(x), by_branch, rtol=0, atol=1e-12)


def test_rep_conv_training_mode_normalises_each_branch_with_batch_statistics():
    module = RepConvNorm(4, 6, ((1, 1), (1, 2))).double().train()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 3 + 1
    out = module(x)
    expected = sum(F.batch_norm(F.conv2d(x, b.conv.weight, groups=b.conv.groups), None, None, training=True,
                                eps=b.bn.eps) for b in module.branches)  # unit gamma, zero beta at init
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_rep_conv_rejects_an_identity_it_cannot_have():
    with pytest.raises(ValueError, match='identity'):
        RepConvNorm(8, 16, ((1, 1),), identity=True)
    with pytest.raises(ValueError, match='stride'):
        RepConvNorm(8, 8, ((3, 1),), stride=2, identity=True)


def test_multi_group_mlp_fuse_folds_the_pre_norm():
    mlp = _randomize_norms(MultiGroupMlp(8, 24, torch.nn.ReLU)).double().eval()
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    fused = mlp.fuse()
    assert [type(m).__name__ for m in fused] == ['Conv2d', 'ReLU', 'Conv2d']
    assert fused[0].groups == 1 and fused[2].groups == 1
    torch.testing.assert_close(fused(x), mlp(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='dense'):
        MultiGroupMlp(8, 16, torch.nn.ReLU, groups=(2, 4))


def test_multi_rate_attention_by_hand():
    """Each half of the heads attends to the map averaged over r x r windows (border windows partial)."""
    torch.manual_seed(0)
    attn = _randomize_norms(MultiRateAttention(8, 8, head_dim=2, rates=(1, 3))).double().eval()
    B, C, H, W = 1, 8, 5, 4
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    out = attn(x)

    def conv_bn(m, t):  # 1x1 Conv-BN applied by hand to (C, N) tokens
        scale = m.bn.weight / (m.bn.running_var + m.bn.eps).sqrt()
        return (m.conv.weight[:, :, 0, 0] @ t) * scale[:, None] + (m.bn.bias - m.bn.running_mean * scale)[:, None]

    tokens = x[0].reshape(C, H * W)
    q = conv_bn(attn.q, tokens).reshape(2, 2, 2, H * W)  # (rate group, head, d, N)
    heads_out = []
    for j, rate in enumerate((1, 3)):
        pooled = []
        for i0 in range(0, H, rate):
            for j0 in range(0, W, rate):
                pooled.append(x[0, :, i0:i0 + rate, j0:j0 + rate].mean(dim=(-2, -1)))
        kv = conv_bn(attn.kv[j], torch.stack(pooled, dim=1)).reshape(2, 2, 2, -1)  # (k|v, head, d, M)
        for h in range(2):
            weights = torch.softmax((q[j, h].T @ kv[0, h]) / 2 ** 0.5, dim=-1)  # (N, M)
            heads_out.append((weights @ kv[1, h].T).T)  # (d, N)
    expected = conv_bn(attn.proj, torch.cat(heads_out, dim=0)).reshape(1, C, H, W)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    with layers.kernel_impl('reference'):
        torch.testing.assert_close(attn(x), expected, rtol=0, atol=1e-12)


def test_multi_rate_attention_checks_its_head_split():
    with pytest.raises(ValueError, match='head_dim'):
        MultiRateAttention(64, 48, head_dim=32, rates=(1, 2))


def test_frequency_mixing_block_splits_channels_into_whole_heads():
    with pytest.raises(ValueError, match='whole heads'):
        FrequencyMixingBlock(32, 16, (1, 2), 0.5, 3, (1, 2, 4), 0., torch.nn.ReLU)  # no room for a conv group
    block = FrequencyMixingBlock(96, 16, rates=(4, 8), lf_ratio=0.5, mlp_ratio=3, mlp_groups=(1, 2, 4),
                                 drop_path=0., act_layer=torch.nn.ReLU)
    assert block.hf_dim == 32 and block.low.q.conv.out_channels == 64  # 48 rounds to 2 heads x 2 rates x 16
    assert block.high.conv.branch_groups == (2, 2) and isinstance(block.low.proj, torch.nn.Identity)


def test_blocks_start_as_the_identity():
    """Zero-gamma: the last BatchNorm of every residual branch starts at 0."""
    x = torch.randn(2, 64, 7, 7)
    for block in (ConvFusionBlock(64, 16, 3, (1, 2, 4), 0., torch.nn.ReLU),
                  FrequencyMixingBlock(64, 16, (1, 2), 0.5, 3, (1, 2, 4), 0., torch.nn.ReLU)):
        torch.testing.assert_close(block.eval()(x), x, rtol=0, atol=0)


def test_stage_layout():
    model = timm.create_model('fmvit_b')
    kinds = [''.join('F' if isinstance(b, FrequencyMixingBlock) else 'C' for b in s.blocks) for s in model.stages]
    assert kinds == ['CCC', 'CCCF', 'CCCCF' * 4 + 'CC', 'CCF']
    kinds = [''.join('F' if isinstance(b, FrequencyMixingBlock) else 'C' for b in s.blocks)
             for s in timm.create_model('fmvit_t').stages]
    assert kinds == ['CC', 'CF', 'CCFCCF', 'CF']


@pytest.mark.parametrize('name', ['fmvit_t', pytest.param('fmvit_b', marks=pytest.mark.slow)])
def test_fuse_gives_the_same_logits(name):
    model = _randomize_norms(timm.create_model(name)).double().eval()
    x = torch.randn(2, 3, 97, 131, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(model)
        names = {type(m).__name__ for m in fused.modules()}
        assert not names & {'ConvNorm', 'RepConvNorm', 'MultiGroupMlp'}, names
        # what stays: the final norm and the mixing blocks' pre-norms (before a 3x3 conv and a pooling)
        norms = [n for n, m in fused.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(n == 'norm' or n.endswith('.norm') for n in norms), norms
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-9 * expected.abs().max().item())
    with pytest.raises(RuntimeError, match='eval'):
        reparameterize_model(timm.create_model(name).train())


@pytest.mark.parametrize('name,reference', [
    ('fmvit_t', 'mobileone_s1'), pytest.param('fmvit_b', 'resnet101', marks=pytest.mark.slow)])
def test_deploy_form_is_sized_to_the_published_operating_point(name, reference):
    """The abstract's two operating points (A5 in backbones/fmvit.py): deployed params and MACs within 3%."""
    ours = reparameterize_model(timm.create_model(name).eval())
    theirs = reparameterize_model(timm.create_model(reference).eval())
    for count in (count_params, lambda m: count_flops(m, (3, 224, 224))['macs']):
        assert abs(count(ours) / count(theirs) - 1) < 0.03


def test_checkpoint_round_trip_and_deploy_form_error(tmp_path):
    model = _randomize_norms(timm.create_model('fmvit_t')).eval()
    path = tmp_path / 'fmvit_t.pth'
    torch.save({'model': model.state_dict()}, path)
    loaded = timm.create_model('fmvit_t', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    torch.save(reparameterize_model(model).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match='deploy form'):
        timm.create_model('fmvit_t', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
