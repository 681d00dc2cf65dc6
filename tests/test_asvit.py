"""AS-ViT specifics: batch independence, the official batched rule, training masks and budget loss, DeiT parity."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from detweights import build_state_dict, fixture_input

FIXTURE = json.loads((Path(__file__).parent / 'fixtures' / 'as_vit_deit_tiny.json').read_text())
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def official_state_dict():
    return build_state_dict(FIXTURE['state_dict'], FIXTURE['overrides'])


def _model(state_dict, **kwargs):
    model = timm.create_model('asvit_deit_tiny', pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict),
                              **kwargs)
    return model.double().eval()


def _batch(n):
    """The fixture images plus noisier/smoother variants, so images keep different token counts."""
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])
    extra = [x[0] * 0.5, x[1].flip(-1), x[0] + 0.3 * torch.randn_like(x[0])]
    return torch.cat([x, torch.stack(extra)])[:n]


def test_per_image_logits_do_not_depend_on_the_batch(official_state_dict):
    model = _model(official_state_dict)
    x = _batch(5)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
        shuffled = model(x[[3, 0, 4, 2, 1]])
        kept = [model.forward_intermediates(x[i:i + 1], indices=[11], intermediates_only=True) for i in range(5)]
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(shuffled, batched[[3, 0, 4, 2, 1]], rtol=0, atol=1e-12)
    assert len(kept) == 5
    # the case is meaningful only if the images really kept different numbers of tokens
    counts = _kept_counts(model, x)
    assert len({tuple(c) for c in counts}) > 1, counts


def _kept_counts(model, x):
    """Patch tokens entering each pruning block, per image (recorded with forward hooks)."""
    counts = []
    for i in range(len(x)):
        seen = []
        hooks = [model.blocks[b].register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[1] - 1))
                 for b in model.pruning_loc]
        with torch.no_grad():
            model(x[i:i + 1])
        for h in hooks:
            h.remove()
        counts.append(seen)
    return counts


def test_token_counts_match_the_official_run(official_state_dict):
    model = _model(official_state_dict)
    x = fixture_input(FIXTURE['input']['seed'], FIXTURE['input']['shape'])
    assert _kept_counts(model, x) == [[int(c) for c in row] for row in FIXTURE['outputs']['patch_tokens_kept_b1']]


def test_official_batched_rule_is_batch_dependent(official_state_dict):
    model = _model(official_state_dict, prune_mode='batch_topk')
    x = _batch(2)
    with torch.no_grad():
        batched = model(x)
        alone = model(x[:1])
    expected = torch.tensor(FIXTURE['outputs']['logits'], dtype=torch.float64)
    assert (batched - expected).abs().max() <= 1e-6 * max(1, expected.abs().max())
    assert not torch.allclose(batched[:1], alone)


def test_no_pruning_equals_timm_deit(official_state_dict):
    """With pruning off the backbone is exactly DeiT: timm's deit_tiny with the same weights gives the same logits."""
    ours = _model(official_state_dict, prune_mode='none')
    deit = timm.create_model('deit_tiny_patch16_224').double().eval()
    deit_state = {k: v for k, v in official_state_dict.items() if not k.startswith('score_predictor')}
    deit.load_state_dict(deit_state)
    x = _batch(2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), deit(x), rtol=0, atol=1e-10)
    # and a plain DeiT checkpoint loads into AS-ViT (thresholds keep their init)
    from_deit = timm.create_model('asvit_deit_tiny', pretrained=True, pretrained_cfg_overlay=dict(state_dict=deit_state))
    assert [p.keep_threshold.item() for p in from_deit.token_pruners] == pytest.approx([0.001, 0.002, 0.003])


def test_zero_surviving_tokens_still_work(official_state_dict):
    state = dict(official_state_dict)
    state['score_predictor.1.keep_threshold'] = torch.tensor(10.0)  # nothing passes the second stage
    model = _model(state)
    x = _batch(3)
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
    assert torch.isfinite(out).all() and features.shape[1] == 1  # only the class token is left


def test_training_masks_budget_loss_and_threshold_gradients(official_state_dict):
    model = _model(official_state_dict, keep_ratio=0.5).train()
    x = _batch(3)
    out = model(x)
    assert out.shape == (3, 1000)
    budget = model.training_losses(torch.nn.CrossEntropyLoss(), None)['flops_budget']
    dense = model.dense_flops()
    # official analytic count: patch embed 196*192*3*16*16, per block 4*C^2*n + 2*C*n^2 + 2*C*4C*n with n=196
    assert dense == pytest.approx((196 * 192 * 3 * 256 + 12 * (4 * 192 ** 2 * 196 + 2 * 192 * 196 ** 2
                                                                + 2 * 192 * 768 * 196)) / 1e9, rel=1e-12)
    (out.mean() * 0 + budget).backward()
    grads = [p.keep_threshold.grad for p in model.token_pruners]
    assert all(g is not None and torch.isfinite(g) for g in grads)
    assert any(g != 0 for g in grads), 'the budget term must reach the thresholds through the straight-through mask'


def test_features_keep_pruned_tokens_last_value(official_state_dict):
    model = _model(official_state_dict)
    x = _batch(2)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[3, 4], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 192, 14, 14)] * 2
    changed = (maps[1] - maps[0]).abs().amax(dim=1) > 0  # (B, 14, 14): tokens updated by block 4
    counts = _kept_counts(model, x)
    assert [int(c.sum()) for c in changed] == [c[0] for c in counts]


def test_train_py_runs_the_asvit_recipe_terms(tmp_path):
    """Budget loss plus additive self-distillation from the dense model, through train.py."""
    teacher = timm.create_model('asvit_deit_tiny', num_classes=10, prune_mode='none')
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'dense.pth')
    result = subprocess.run(
        [sys.executable, str(ROOT / 'train.py'), '--model', 'asvit_deit_tiny', '--dataset', 'digits',
         '--digits-size', '32', '--img-size', '224', '--crop-pct', '1.0', '--batch-size', '4', '--epochs', '1',
         '--max-steps-per-epoch', '2', '--initial-checkpoint', str(tmp_path / 'dense.pth'),
         '--model-kwargs', 'keep_ratio=0.65', '--distill-type', 'soft', '--distill-model', 'asvit_deit_tiny',
         '--distill-model-kwargs', 'prune_mode=none', '--distill-checkpoint', str(tmp_path / 'dense.pth'),
         '--distill-weighting', 'add', '--workers', '0', '--threads', '1', '--output', str(tmp_path),
         '--experiment', 'run'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / 'run' / 'steps.jsonl').read_text().splitlines()]
    assert len(steps) == 2 and all(s['loss'] > 0 for s in steps)


def _lvvit_with_thresholds(**kwargs):
    """LV-ViT-S with deterministic weights and thresholds that prune in stages 2 and 3."""
    torch.manual_seed(0)
    model = timm.create_model('asvit_lvvit_s', **kwargs)
    with torch.no_grad():
        for pruner, value in zip(model.token_pruners, (0.0, 0.0052, 0.0052)):
            pruner.keep_threshold.fill_(value)
    return model


def test_lvvit_aux_head_and_batch_independence():
    model = _lvvit_with_thresholds().eval()
    x = torch.randn(3, 3, 224, 224)
    x[1] *= 0.3
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
        tokens = model.forward_features(x[:1])
        expected = model.head(tokens[:, 0]) + 0.5 * model.aux_head(tokens[:, 1:]).amax(dim=1)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[:1], expected)
    assert tokens.shape[1] - 1 < 196, 'thresholds should prune'


def test_lvvit_token_distillation_adds_the_kept_token_kl():
    """CE + budget + alpha * (KL(class) + KL(kept tokens)), as the official LV-ViT loss, through the hook protocol."""
    import torch.nn.functional as F
    from engine.losses import DistillationLoss
    student = _lvvit_with_thresholds().train()
    teacher = _lvvit_with_thresholds(prune_mode='none').eval()
    student.set_distilled_training(True)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([3, 7])
    outputs = student(x)
    assert torch.is_tensor(outputs) and outputs.shape == (2, 1000)
    assert student.distill_targets == ('token_logits',) and student._train_keep.shape == (2, 196)
    ce = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        targets = teacher.forward_distill_targets(x)
    kl = F.kl_div(F.log_softmax(outputs, 1), F.log_softmax(targets['logits'], 1), reduction='batchmean',
                  log_target=True)
    kept = student._train_keep.reshape(-1) > 0.5
    assert 0 < kept.sum() < kept.numel()
    token_kl = F.kl_div(F.log_softmax(student._train_token_logits.reshape(-1, 1000)[kept], -1),
                        F.log_softmax(targets['token_logits'].reshape(-1, 1000)[kept], -1), reduction='batchmean',
                        log_target=True)
    budget = student.budget_weight * student._budget_loss
    loss = DistillationLoss(ce, teacher, 'soft', alpha=0.5, weighting='add')(x, outputs, y, student)
    torch.testing.assert_close(loss, ce(outputs, y) + (kl + token_kl) * 0.5 + budget, rtol=0, atol=0)
    copy.deepcopy(student)  # the hooks handed their terms out: no graph stays on the model
    loss.backward()
    assert student.token_pruners[1].keep_threshold.grad is not None
    with pytest.raises(ValueError, match='forward_distill_targets'):  # a teacher that cannot give token logits
        DistillationLoss(ce, timm.create_model('deit_tiny_patch16_224'), 'soft')(x, student(x), y, student)


def test_calibrate_thresholds_hits_the_keep_ratios():
    model = timm.create_model('asvit_deit_tiny').eval()
    x = torch.randn(4, 3, 224, 224)
    model.calibrate_thresholds(x, keep_ratios=(0.7, 0.49, 0.343))
    kept = _kept_counts(model, x)
    mean_kept = torch.tensor(kept, dtype=torch.float).mean(dim=0) / 196
    torch.testing.assert_close(mean_kept, torch.tensor([0.7, 0.49, 0.343]), atol=0.01, rtol=0)
