"""LITv2 specifics: HiLo on maps the window does not divide, deformable conv against a plain-loop transcription
of the DCN kernel, token merging, padding of odd input sizes, head splits and checkpoint layouts."""
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from backbones.litv2 import checkpoint_filter_fn
from detweights import build_state_dict, fixture_input
from layers import DeformConv2dPack, DeformTokenMerge, HiLoAttention, deform_conv2d
from layers.hilo_attn import hilo_head_split

FIXTURE = json.loads((Path(__file__).parent / 'fixtures' / 'litv2_litv2_s.json').read_text())


def _naive_hilo(layer: HiLoAttention, x: torch.Tensor) -> torch.Tensor:
    """HiLo by explicit loops over windows and heads on the zero-padded map (the official padding rule)."""
    B, H, W, C = x.shape
    ws, d = layer.window_size, layer.head_dim
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    xp = torch.zeros(B, Hp, Wp, C, dtype=x.dtype)
    xp[:, :H, :W] = x
    outs = []
    if layer.h_heads:
        hi = torch.zeros(B, Hp, Wp, layer.h_dim, dtype=x.dtype)
        for r in range(0, Hp, ws):
            for c in range(0, Wp, ws):
                tokens = xp[:, r:r + ws, c:c + ws].reshape(B, ws * ws, C)
                q, k, v = layer.h_qkv(tokens).split(layer.h_dim, dim=-1)
                heads = []
                for h in range(layer.h_heads):
                    sl = slice(h * d, (h + 1) * d)
                    weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * d ** -0.5, dim=-1)
                    heads.append(weights @ v[..., sl])
                hi[:, r:r + ws, c:c + ws] = torch.cat(heads, -1).reshape(B, ws, ws, -1)
        outs.append(layer.h_proj(hi))
    if layer.l_heads:
        pooled = torch.stack([xp[:, r:r + ws, c:c + ws].mean(dim=(1, 2))
                              for r in range(0, Hp, ws) for c in range(0, Wp, ws)], dim=1)
        q = layer.l_q(xp.reshape(B, -1, C))
        k, v = layer.l_kv(pooled).split(layer.l_dim, dim=-1)
        heads = []
        for h in range(layer.l_heads):
            sl = slice(h * d, (h + 1) * d)
            heads.append(torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * d ** -0.5, dim=-1) @ v[..., sl])
        outs.append(layer.l_proj(torch.cat(heads, -1)).reshape(B, Hp, Wp, -1))
    return torch.cat(outs, dim=-1)[:, :H, :W]


@pytest.mark.parametrize('impl', ['reference', 'sdpa'])
@pytest.mark.parametrize('size,ws,alpha', [((7, 5), 2, 0.5), ((5, 8), 3, 0.75), ((6, 6), 2, 0.9), ((3, 3), 2, 0.0),
                                           ((5, 3), 2, 1.0), ((4, 5), 1, 0.5), ((1, 1), 2, 0.5)])
def test_hilo_pads_maps_the_window_does_not_divide(size, ws, alpha, impl):
    layer = HiLoAttention(32, num_heads=4, window_size=ws, alpha=alpha, kernel_impl=impl).double()
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _naive_hilo(layer, x), rtol=0, atol=1e-12)


def test_hilo_head_split_follows_the_official_truncation():
    assert hilo_head_split(12, 0.9, 2) == (2, 10)
    assert hilo_head_split(16, 0.9, 2) == (2, 14)
    assert hilo_head_split(12, 0.7, 2) == (4, 8)  # int(8.399999999999999)
    assert hilo_head_split(12, 0.2, 2) == (10, 2)
    assert hilo_head_split(24, 0.9, 1) == (0, 24)  # window 1: plain global attention
    names = {n.rsplit('.', 1)[0] for n, _ in HiLoAttention(64, 4, 2, alpha=0.0).named_parameters()}
    assert names == {'h_qkv', 'h_proj'}
    names = {n.rsplit('.', 1)[0] for n, _ in HiLoAttention(64, 4, 2, alpha=1.0).named_parameters()}
    assert names == {'l_q', 'l_kv', 'l_proj'}


def _bilinear_scalar(img, y, x):
    """The DCN CUDA kernel's `dmcn_im2col_bilinear` with its caller's band test, one channel, one point."""
    H, W = img.shape
    if not (-1 < y < H and -1 < x < W):
        return 0.
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.
    for yy, xx, weight in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                           (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy <= H - 1 and 0 <= xx <= W - 1:
            total += weight * float(img[yy, xx])
    return total


def _deform_conv_loops(x, offset, weight, bias, stride, padding, dilation):
    B, C, H, W = x.shape
    c_out, _, kh, kw = weight.shape
    Ho, Wo = offset.shape[2:]
    out = torch.zeros(B, c_out, Ho, Wo, dtype=torch.float64)
    for b in range(B):
        for oh in range(Ho):
            for ow in range(Wo):
                cols = torch.zeros(C, kh, kw, dtype=torch.float64)
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = oh * stride - padding + i * dilation + float(offset[b, 2 * k, oh, ow])
                        x_ = ow * stride - padding + j * dilation + float(offset[b, 2 * k + 1, oh, ow])
                        for c in range(C):
                            cols[c, i, j] = _bilinear_scalar(x[b, c], y, x_)
                out[b, :, oh, ow] = (weight * cols).sum(dim=(1, 2, 3)) + bias
    return out


@pytest.mark.parametrize('impl', ['reference', 'torchvision'])
@pytest.mark.parametrize('k,stride,padding,dilation', [(2, 2, 0, 1), (3, 1, 1, 2)])
def test_deform_conv_equals_a_plain_loop_transcription_of_the_dcn_kernel(k, stride, padding, dilation, impl):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    ho = (5 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (6 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    offset = 2.5 * torch.randn(2, 2 * k * k, ho, wo, dtype=torch.float64)
    offset[0, 0, 0, 0], offset[0, 1, 0, 0] = -0.999, -0.5  # just inside the band above/left of the map
    offset[1, 0, 0, 0] = -1.0  # y = -1 exactly: outside the band, the sample is 0
    weight, bias = torch.randn(4, 3, k, k, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expected = _deform_conv_loops(x, offset, weight, bias, stride, padding, dilation)
    out = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, impl=impl)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_token_merge_with_zero_offsets_is_a_strided_conv():
    """The official init zeroes the offset branch: DTM then starts as a 2x2/s2 conv (odd sides floored)."""
    dtm = DeformTokenMerge(8, 16).double().eval()
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = F.gelu(dtm.norm(F.conv2d(x, dtm.conv.weight, dtm.conv.bias, stride=2)))
        torch.testing.assert_close(dtm(x), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r'at least 2 x 2, got \(1, 4\)'):
        dtm(torch.randn(1, 8, 1, 4, dtype=torch.float64))


@pytest.fixture(scope='module')
def litv2_s_official():
    state_dict = build_state_dict(FIXTURE['state_dict'])
    return timm.create_model('litv2_s', pretrained=True,
                             pretrained_cfg_overlay=dict(state_dict=state_dict)).eval()


def test_inputs_are_padded_to_the_patch_size(litv2_s_official):
    """As the official dense-prediction backbone: an image is zero-padded at the right/bottom to a multiple of 4."""
    x = torch.randn(1, 3, 62, 93)
    with torch.no_grad():
        torch.testing.assert_close(litv2_s_official(x), litv2_s_official(F.pad(x, (0, 3, 0, 2))),
                                   rtol=1e-5, atol=1e-5)
        feats = litv2_s_official.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize('hilo_impl', ['reference', 'sdpa'])
@pytest.mark.parametrize('deform_impl', ['reference', 'torchvision'])
def test_fixture_logits_under_every_kernel_combination(litv2_s_official, hilo_impl, deform_impl):
    """Each named implementation runs against the fixture, torchvision's deform_conv2d included ('auto' keeps the
    reference on the CPU, so only naming it runs it here)."""
    model = litv2_s_official.double()
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])[:1]
    expected = torch.tensor(FIXTURE['outputs']['logits'], dtype=torch.float64)[:1]
    layers = [m for m in model.modules() if isinstance(m, (HiLoAttention, DeformConv2dPack))]
    assert {type(m) for m in layers} == {HiLoAttention, DeformConv2dPack}
    try:
        for m in layers:
            m.kernel_impl = hilo_impl if isinstance(m, HiLoAttention) else deform_impl
        with torch.no_grad():
            assert (model(x) - expected).abs().max() < 1e-13
    finally:
        for m in layers:
            m.kernel_impl = None
        model.float()


def test_too_small_input_is_a_clear_error():
    model = timm.create_model('litv2_s_alpha05').eval()
    with pytest.raises(ValueError, match=r'at least 29 x 29 px .*got \(28, 64\)'):
        model(torch.randn(1, 3, 28, 64))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 29, 29)).shape == (1, 1000)


def _official_keys(state_dict):
    """Our layout -> the official one (inverse of checkpoint_filter_fn's renaming)."""
    import re
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^stem\.', 'patch_embed.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.conv\.', lambda m: f'layers.{int(m[1]) - 1}.downsample.dconv.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.norm\.', lambda m: f'layers.{int(m[1]) - 1}.downsample.norm_layer.',
                     key)
        key = re.sub(r'^stages\.(\d+)\.blocks\.', r'layers.\1.blocks.', key)
        key = re.sub(r'\.mlp\.dwconv\.', '.mlp.dwconv.dwconv.', key)
        key = re.sub(r'^head\.fc\.', 'head.', key)
        out[key] = value
    return out


@pytest.mark.parametrize('name,attn_keys', [('litv2_s_alpha0', {'h_qkv', 'h_proj'}),
                                            ('litv2_s_alpha1', {'l_q', 'l_kv', 'l_proj'})])
def test_alpha_ablation_layouts_load(name, attn_keys):
    """alpha 0 has only Hi-Fi keys in stage 3, alpha 1 only Lo-Fi ones; stage 4 is always Lo-Fi (window 1)."""
    with torch.device('meta'):
        model = timm.create_model(name)
    stage3 = {k.split('.attn.')[1].rsplit('.', 1)[0] for k in model.state_dict() if k.startswith('stages.2.')
              and '.attn.' in k}
    stage4 = {k.split('.attn.')[1].rsplit('.', 1)[0] for k in model.state_dict() if k.startswith('stages.3.')
              and '.attn.' in k}
    assert stage3 == attn_keys and stage4 == {'l_q', 'l_kv', 'l_proj'}
    official = _official_keys(model.state_dict())
    assert 'layers.0.downsample.dconv.conv_offset.weight' in official and 'patch_embed.proj.weight' in official
    converted = checkpoint_filter_fn({'model': official}, model)
    assert list(converted) == list(model.state_dict())
