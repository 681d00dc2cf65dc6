"""BiFormer-specific checks: region layout, padding rule, memory of the fast routing paths, official layouts."""
import re

import pytest
import timm
import torch

from engine.profile import peak_allocated_mib
from layers import BiLevelRoutingAttention, KernelUnavailableError, routed_attention
from layers.routing_attn import region_partition, region_reverse, region_route


def test_region_partition_order_and_inverse():
    S, rh, rw = 3, 2, 4
    x = torch.arange(S * rh * S * rw, dtype=torch.float64).reshape(1, S * rh, S * rw, 1)
    regions = region_partition(x, S)
    assert regions.shape == (1, S * S, rh * rw, 1)
    # region j * S + i holds rows j * rh.., columns i * rw.., row-major inside
    j, i = 1, 2
    torch.testing.assert_close(regions[0, j * S + i, :, 0], x[0, j * rh:(j + 1) * rh, i * rw:(i + 1) * rw, 0].flatten())
    torch.testing.assert_close(region_reverse(regions, S, S * rh, S * rw), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match='divisible by the 3 x 3 region grid'):
        region_partition(torch.zeros(1, 7, 6, 1), S)


def test_route_picks_top_regions_and_validates_topk():
    q = torch.zeros(1, 4, 2, 3)
    k = torch.arange(4, dtype=torch.float32)[None, :, None, None].expand(1, 4, 2, 3)
    q[..., :] = 1.0
    assert region_route(q, k, 2, 0.5)[0, 0].tolist() == [3, 2]
    with pytest.raises(ValueError, match=r'topk must be in \[1, 4\]'):
        region_route(q, k, 5, 0.5)


@pytest.mark.parametrize('impl', ['reference', 'sdpa', 'auto'])
@pytest.mark.parametrize('size,n_win,topk', [((20, 13), 7, 4), ((5, 9), 7, 16), ((30, 45), 8, 1)])
def test_padding_is_zero_padding_before_the_projection(impl, size, n_win, topk):
    """auto_pad == zero-pad the block input at the bottom/right, run the unpadded layer on it, crop."""
    torch.manual_seed(0)
    padded_layer = BiLevelRoutingAttention(16, 2, n_win=n_win, topk=topk, auto_pad=True, kernel_impl=impl).double()
    strict_layer = BiLevelRoutingAttention(16, 2, n_win=n_win, topk=topk, auto_pad=False, kernel_impl=impl).double()
    strict_layer.load_state_dict(padded_layer.state_dict())
    H, W = size
    x = torch.randn(2, H, W, 16, dtype=torch.float64)
    x_padded = torch.nn.functional.pad(x, (0, 0, 0, -W % n_win, 0, -H % n_win))
    with torch.no_grad():
        torch.testing.assert_close(padded_layer(x), strict_layer(x_padded)[:, :H, :W], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='auto_pad=False needs a map divisible by n_win'):
        strict_layer(x)


def test_masked_refuses_sparse_routing_with_a_reason():
    q = k = v = torch.randn(1, 49, 4, 8)
    with pytest.raises(KernelUnavailableError, match='too sparse for dense masked attention'):
        routed_attention(q, k, v, 1, 2, 0.3, impl='masked')
    routed_attention(q, k, v, 16, 2, 0.3, impl='masked')


# BiFormer-T stage shapes at 224 (batch 1): (channels, heads, map side, topk)
_STAGES = [(64, 2, 56, 1), (128, 4, 28, 4), (256, 8, 14, 16)]


@pytest.mark.parametrize('dim,heads,size,topk', _STAGES)
def test_fast_path_uses_less_memory_than_the_official_gather(dim, heads, size, topk):
    w2 = (size // 7) ** 2
    q, k, v = torch.randn(1, 49, w2, 3 * dim).split(dim, dim=-1)
    with torch.inference_mode():
        reference = peak_allocated_mib(lambda: routed_attention(q, k, v, topk, heads, dim ** -0.5, impl='reference'))
        fast = peak_allocated_mib(lambda: routed_attention(q, k, v, topk, heads, dim ** -0.5, impl='auto'))
    assert fast < 0.6 * reference, f'auto {fast:.2f} MiB vs reference {reference:.2f} MiB'
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))

    def train_step(impl):
        out = routed_attention(q, k, v, topk, heads, dim ** -0.5, impl=impl)
        torch.autograd.grad(out.sum(), (q, k, v))
    assert peak_allocated_mib(lambda: train_step('auto')) < 0.6 * peak_allocated_mib(lambda: train_step('reference'))


def _to_official_stl(key: str) -> str:
    """Our biformer_stl key -> the official models/biformer_stl.py key (the inverse of the filter's rules)."""
    for pattern, official in ((r'^stem\.conv\.', 'downsample_layers.0.0.'), (r'^stem\.norm\.', 'downsample_layers.0.1.'),
                              (r'^stages\.(\d)\.downsample\.norm\.', r'downsample_layers.\1.0.'),
                              (r'^stages\.(\d)\.downsample\.conv\.', r'downsample_layers.\1.1.'),
                              (r'\.mlp\.fc1\.', '.mlp.0.'), (r'\.mlp\.fc2\.', '.mlp.2.'), (r'^head\.fc\.', 'head.')):
        key = re.sub(pattern, official, key)
    if re.search(r'^stages\.[0-2]\.blocks\.\d+\.attn\.', key):  # routing-attention stages
        key = key.replace('.attn.qkv.', '.attn.qkv.qkv.').replace('.attn.proj.', '.attn.wo.')
    return key


def test_stl_official_layout_loads(tmp_path):
    source = timm.create_model('biformer_stl', depths=(1, 1, 1, 1)).eval()
    official = {_to_official_stl(k): v for k, v in source.state_dict().items()}
    assert 'downsample_layers.1.0.running_var' in official and 'stages.0.blocks.0.attn.qkv.qkv.weight' in official
    assert 'stages.3.blocks.0.attn.qkv.weight' in official and 'stages.3.blocks.0.attn.proj.weight' in official
    path = tmp_path / 'stl.pth'
    torch.save({'model': official}, path)
    model = timm.create_model('biformer_stl', depths=(1, 1, 1, 1), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_auto_pad_off_restricts_sizes_like_the_official_classifier():
    model = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1), auto_pad=False).eval()
    padded = timm.create_model('biformer_tiny', depths=(1, 1, 1, 1), pretrained=True,
                               pretrained_cfg_overlay=dict(state_dict=model.state_dict())).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), model(x), rtol=0, atol=0)  # nothing to pad at 224
        with pytest.raises(ValueError, match='divisible by n_win=7'):
            model(torch.randn(1, 3, 256, 256))


def _nchw_bra_definition(layer: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """The official NCHW operator (ops/bra_nchw.py) written out densely: unscaled routing on average-pooled q, k
    (ceil_mode, count_include_pad=False), zero-padding of q, k, v after the projection, attention over the routed
    regions' tokens with the padded keys included, LePE on the unpadded values."""
    N, H, W, C = x.shape
    S, heads = layer.n_win, layer.num_heads
    rh, rw = H // S, W // S
    q, k, v = (t.permute(0, 3, 1, 2) for t in layer.qkv(x).split(C, dim=-1))
    pool = dict(kernel_size=(rh, rw), ceil_mode=True, count_include_pad=False)
    q_r, k_r = (torch.nn.functional.avg_pool2d(t, **pool).flatten(2) for t in (q, k))  # (N, C, P)
    gh, gw = -(-H // rh), -(-W // rw)
    idx = torch.topk(q_r.transpose(1, 2) @ k_r, layer.topk, dim=-1).indices  # (N, P, topk)
    Hp, Wp = gh * rh, gw * rw
    qp, kp, vp = (torch.nn.functional.pad(t, (0, Wp - W, 0, Hp - H)) for t in (q, k, v))
    region = (torch.arange(Hp)[:, None] // rh * gw + torch.arange(Wp)[None, :] // rw).flatten()  # region of a token
    routed = torch.zeros(N, gh * gw, gh * gw, dtype=torch.bool).scatter_(2, idx, True)
    mask = routed[:, region][:, :, region]  # (N, Hp Wp, Hp Wp): query token -> allowed key tokens
    split = [t.reshape(N, heads, C // heads, Hp * Wp).transpose(-1, -2) for t in (qp, kp, vp)]
    logits = (split[0] * layer.scale) @ split[1].transpose(-1, -2)
    out = logits.masked_fill(~mask[:, None], float('-inf')).softmax(-1) @ split[2]
    out = out.transpose(-1, -2).reshape(N, C, Hp, Wp)[:, :, :H, :W] + layer.lepe(v)
    return layer.proj(out.permute(0, 2, 3, 1))


@pytest.mark.parametrize('impl', ['reference', 'sdpa', 'auto'])
@pytest.mark.parametrize('size,n_win,topk', [((14, 14), 7, 16), ((20, 13), 7, 4), ((9, 31), 4, 3), ((30, 45), 8, 1)])
def test_nchw_mode_is_the_official_refactor(impl, size, n_win, topk):
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(16, 2, n_win=n_win, topk=topk, mode='nchw', kernel_impl=impl).double()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _nchw_bra_definition(layer, x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='at least n_win=7 per side'):
        BiLevelRoutingAttention(16, 2, n_win=7, topk=1, mode='nchw')(torch.randn(1, 6, 20, 16))


def test_stl_nchw_global_stage_reads_lepe_from_the_values():
    from backbones.biformer import GlobalAttentionLePE
    torch.manual_seed(0)
    layer = GlobalAttentionLePE(32, 8, lepe_on='v').double()
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    q, k, v = layer.qkv(x).flatten(1, 2).split(32, dim=-1)
    heads = [t.reshape(2, 30, 8, 4).transpose(1, 2) for t in (q, k, v)]
    attn = ((heads[0] @ heads[1].transpose(-1, -2)) * 4 ** -0.5).softmax(-1) @ heads[2]
    lepe = layer.lepe(v.reshape(2, 5, 6, 32).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    expected = layer.proj(attn.transpose(1, 2).reshape(2, 5, 6, 32) + lepe)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def _to_official_stl_nchw(key: str, value: torch.Tensor):
    """Our biformer_stl_nchw entry -> the official models/biformer_stl_nchw.py entry (1x1 convs, conv weights 4-D)."""
    key = _to_official_stl(key).replace('.attn.qkv.qkv.', '.attn.qkv_linear.').replace('.attn.wo.', '.attn.output_linear.')
    if re.search(r'(attn\.(qkv_linear|output_linear|qkv|proj)|mlp\.[02])\.weight$', key):
        value = value[:, :, None, None]
    return key, value


def test_stl_nchw_official_layout_loads(tmp_path):
    source = timm.create_model('biformer_stl_nchw', depths=(1, 1, 1, 1)).eval()
    official = dict(_to_official_stl_nchw(k, v) for k, v in source.state_dict().items())
    assert official['stages.0.blocks.0.attn.qkv_linear.weight'].ndim == 4
    assert official['stages.3.blocks.0.attn.qkv.weight'].ndim == 4 and 'stages.3.blocks.0.mlp.2.bias' in official
    path = tmp_path / 'stl_nchw.pth'
    torch.save({'model': official}, path)
    model = timm.create_model('biformer_stl_nchw', depths=(1, 1, 1, 1), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 120, 136)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_stl_nchw_names_its_smallest_input():
    model = timm.create_model('biformer_stl_nchw', depths=(1, 1, 1, 1)).eval()
    assert model.min_input_size == (112, 112) == model.pretrained_cfg['min_input_size'][1:]
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 119))
        with pytest.raises(ValueError, match='needs inputs of at least 112x112, got 111x300'):
            model(torch.randn(1, 3, 111, 300))
