"""DependencyViT: reversed-attention semantics, message controller, Lite pruning, head, dependency tree."""
import pytest
import timm
import torch
import torch.nn.functional as F

from layers import dependency_mask, kernel_impl, reversed_attention
from layers.reversed_attn import reversed_attention_reference


def _photos(size: int = 224) -> torch.Tensor:
    """scikit-learn's two sample photographs, centre-cropped and resized, normalised as the cfg says (0.5/0.5)."""
    from sklearn.datasets import load_sample_images
    batch = []
    for img in load_sample_images().images:
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)
        s = min(t.shape[1:])
        top, left = (t.shape[1] - s) // 2, (t.shape[2] - s) // 2
        t = F.interpolate(t[None, :, top:top + s, left:left + s], size=(size, size), mode='bicubic',
                          align_corners=False)[0]
        batch.append((t - 0.5) / 0.5)
    return torch.stack(batch)


def test_reversed_attention_sends_from_children_to_parents():
    """out[p] = sum_c A_F[c, p] gate[c] v[c], built by hand for one head; a silent child sends nothing."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    gate = torch.rand(1, 1, 6, generator=g, dtype=torch.float64)
    gate[..., 2] = 0.
    a_f = (q[0, 0] @ k[0, 0].T * 0.5).softmax(dim=-1)  # child -> parent
    expected = torch.stack([sum(a_f[c, p] * gate[0, 0, c] * v[0, 0, c] for c in range(6)) for p in range(6)])
    for impl in ('reference', 'folded'):
        out, recv = reversed_attention(q, k, v, gate, 0.5, impl=impl)
        torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-12)
        # every child's forward weights sum to 1, so the total received mass is the total gate
        torch.testing.assert_close(recv.sum(), gate.sum(), rtol=0, atol=1e-12)
    v2 = v.clone()
    v2[..., 2, :] += 100.
    torch.testing.assert_close(reversed_attention_reference(q, k, v2, gate, 0.5)[0],
                               reversed_attention_reference(q, k, v, gate, 0.5)[0], rtol=0, atol=1e-12)
    mask = dependency_mask(q, k, gate, 0.5)[0]
    torch.testing.assert_close(mask, (a_f * gate[0, 0, :, None]).T, rtol=0, atol=1e-12)


def test_lite_token_schedule_and_constructor_args():
    model = timm.create_model('dependencyvit_lite_tiny')
    counts = model.token_counts()
    assert [counts[i] for i in (0, 1, 4, 7, 10, 11)] == [196, 164, 132, 100, 69, 69]
    assert timm.create_model('dependencyvit_tiny').token_counts() == [196] * 12
    custom = timm.create_model('dependencyvit_tiny', prune_layers=(3,), prune_ratio=0.5, head_select_temp=1.0)
    assert custom.token_counts() == [196] * 3 + [98] * 9
    assert all(blk.attn.head_select_temp == 1.0 for blk in custom.blocks)
    with pytest.raises(ValueError, match='prune_layers'):
        timm.create_model('dependencyvit_tiny', prune_layers=(12,))
    with pytest.raises(ValueError, match='leave some tokens'):
        timm.create_model('dependencyvit_tiny', prune_layers=(1, 2), prune_ratio=0.5)
    with pytest.raises(ValueError, match='head_select_temp'):
        timm.create_model('dependencyvit_tiny', head_select_temp=0.)


def test_head_multiplies_tokens_by_message_controller():
    model = timm.create_model('dependencyvit_lite_tiny', num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for blk in model.blocks:  # every controller outputs sigmoid(0) = 1/2, so M_12 = 2^-12 for every token
            blk.attn.message_controller.fc1.weight.zero_()
        tokens, msg, _, _ = model._run_blocks(model._embed(x), range(len(model.blocks)))
        assert tokens.shape == (1, 69, 192)
        torch.testing.assert_close(msg, torch.full_like(msg, 2. ** -12), rtol=0, atol=0)
        features = model.forward_features(x)
        torch.testing.assert_close(features, model.norm(tokens) * 2. ** -12)
        torch.testing.assert_close(model(x), model.head(features.mean(dim=1)))
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), features.mean(dim=1))


def test_reference_and_fast_kernels_give_the_same_model_output():
    model = timm.create_model('dependencyvit_lite_tiny').double().eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        fast = model(x)
        with kernel_impl('reference'):
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize('name', ['dependencyvit_lite_tiny', pytest.param('dependencyvit_tiny', marks=pytest.mark.slow)])
def test_dependency_tree_of_real_photos(name):
    model = timm.create_model(name).eval()
    x = _photos()
    tree = model.dependency_tree(x, return_masks=True)
    L, B, N = tree['parents'].shape
    assert (L, B, N) == (12, 2, 196)
    alive, parents = tree['alive'], tree['parents']
    assert alive.sum(-1)[:, 0].tolist() == [n for n in [196] + model.token_counts()[:-1]]
    # every present token has a parent present in the same layer; pruned tokens have none
    assert ((parents >= 0) == alive).all()
    assert alive.gather(2, parents.clamp(min=0))[alive].all()
    # cumulative message controller: in (0, 1], never increases over depth
    msg = tree['message']
    kept = msg > 0
    assert (msg[kept] <= 1).all()
    assert (msg[1:][kept[1:]] <= msg[:-1][kept[1:]] + 1e-7).all()
    # first layer's parents from the operator's definition, recomputed outside the model
    blk = model.blocks[0]
    with torch.no_grad():
        tokens = blk.norm1(model.patch_embed(x) + model.pos_embed)
        q, k, _, gate, _ = blk.attn._qkv_gate(tokens, tokens.new_ones(B, N))
        mask = dependency_mask(q, k, gate, blk.attn.scale)
    torch.testing.assert_close(tree['masks'][0], mask)
    assert torch.equal(parents[0], mask.argmax(dim=1))
    # Lite: each pruning keeps the tokens that received the most messages in that layer
    for layer in model.prune_layers:
        recv = tree['received'][layer]
        survivors = alive[layer + 1]
        dropped = alive[layer] & ~survivors
        assert (recv.masked_fill(~survivors, float('inf')).amin(-1) >= recv.masked_fill(~dropped, -1.).amax(-1)).all()
    # the trees of the two photographs differ (the parse depends on the image)
    assert not torch.equal(parents[:, 0], parents[:, 1])


def test_checkpoint_round_trip_and_pos_embed_resampling(tmp_path):
    model = timm.create_model('dependencyvit_lite_tiny').eval()
    path = tmp_path / 'dependencyvit.pth'
    torch.save({'model': model.state_dict()}, path)
    loaded = timm.create_model('dependencyvit_lite_tiny', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    bigger = timm.create_model('dependencyvit_lite_tiny', pretrained=True, img_size=256,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert bigger.pos_embed.shape == (1, 256, 192)
    assert sorted(set(bigger.token_counts()), reverse=True) == [256, 215, 174, 133, 92]  # floor at each pruning
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
