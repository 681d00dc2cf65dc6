"""HaloAttention equals timm's HaloAttn (HaloNet's reference implementation) with the same weights."""
import pytest
import torch
from timm.layers.halo_attn import HaloAttn

from layers import HaloAttention

CASES = [
    dict(dim=64, num_heads=4, block_size=8, halo_size=3, size=(16, 24)),
    dict(dim=32, num_heads=2, block_size=4, halo_size=1, size=(12, 8), stride=2),
    dict(dim=32, num_heads=2, block_size=8, halo_size=2, size=(16, 16), stride=2, avg_down=True),
    dict(dim=48, dim_out=64, num_heads=4, block_size=8, halo_size=2, size=(8, 8), qkv_bias=True, scale_pos_embed=True),
    dict(dim=32, num_heads=4, block_size=6, halo_size=2, size=(12, 12), stride=2),
]


@pytest.mark.parametrize('impl', ['reference', 'matmul', 'sdpa', 'onehot'])
@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(f'{k}{v}' for k, v in c.items() if k != 'size'))
def test_equals_timm_halo_attn(case, impl):
    case = dict(case)
    size = case.pop('size')
    theirs = HaloAttn(**case).double().eval()
    ours = HaloAttention(**case, kernel_impl=impl).double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, case['dim'], *size, dtype=torch.float64, requires_grad=True)
    out, expected = ours(x), theirs(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad, = torch.autograd.grad(out.sum(), x)
    expected_grad, = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('impl', ['reference', 'matmul', 'onehot'])
@pytest.mark.parametrize('stride,block,avg_down', [(1, 8, False), (2, 8, False), (2, 8, True), (2, 7, False)])
def test_map_not_divisible_by_the_block_is_zero_padded(impl, stride, block, avg_down):
    """A map of H x W equals the same map zero-padded to whole blocks (q, k, v of zeros: no bias), cropped."""
    torch.manual_seed(0)
    layer = HaloAttention(16, num_heads=2, block_size=block, halo_size=2, stride=stride, avg_down=avg_down,
                          kernel_impl=impl).double().eval()
    x = torch.randn(2, 16, 19, 23, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, -23 % block, 0, -19 % block))
    with torch.no_grad():
        out, expected = layer(x), layer(padded)
    pooled = isinstance(layer.pool, torch.nn.AvgPool2d)
    h, w = (19 // 2, 23 // 2) if pooled else (-(-19 // stride), -(-23 // stride))
    assert out.shape[-2:] == (h, w)
    torch.testing.assert_close(out, expected[..., :h, :w], rtol=0, atol=1e-12)
