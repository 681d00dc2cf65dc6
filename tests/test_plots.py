"""eval.py --plot: the drawn structures are the models' own decisions (kept tokens, parents, routed regions), and
the pictures are valid PNGs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import layers.routing_attn
from engine.plots import model_structure, plot_prediction
from conftest import is_png

ROOT = Path(__file__).resolve().parents[1]
TOP5 = [dict(index=i, label=f'class {i}', probability=p) for i, p in enumerate((0.4, 0.3, 0.15, 0.1, 0.05))]


def _image(model):
    torch.manual_seed(0)
    c, h, w = model.pretrained_cfg['input_size']
    return torch.randn(1, c, h, w)


def test_asvit_kept_tokens_are_the_forward_selection(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('asvit_deit_tiny').eval()
    model.calibrate_thresholds(torch.randn(4, 3, 224, 224))  # the paper's keep ratios: every stage prunes
    x = _image(model)
    # what the forward itself does: the tokens entering each pruning block, and the scores of the block before
    entering, scores = [], {}
    hooks = [model.blocks[b].register_forward_pre_hook(lambda m, args: entering.append(args[0].shape[1] - 1))
             for b in model.pruning_loc]

    def keep_score(module, args, out):
        scores.setdefault('first', out[1])

    hooks.append(model.blocks[model.pruning_loc[0] - 1].register_forward_hook(keep_score))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    structure = model_structure(model, x)
    masks = structure['masks']
    assert structure['kind'] == 'kept_tokens' and masks.shape == (3, 196)
    assert [int(m.sum()) for m in masks] == entering and entering[-1] < entering[0] < 196
    first_threshold = model.token_pruners[0].keep_threshold
    assert torch.equal(masks[0], scores['first'][0] > first_threshold)
    assert all(bool((later <= earlier).all()) for earlier, later in zip(masks, masks[1:]))  # pruned stays pruned
    plot_prediction(torch.rand(224, 224, 3), TOP5, tmp_path / 'asvit.png', structure=structure)
    assert is_png(tmp_path / 'asvit.png')


def test_dependencyvit_parents_are_the_dependency_tree(tmp_path):
    model = timm.create_model('dependencyvit_lite_tiny').eval()
    x = _image(model)
    structure = model_structure(model, x)
    tree = model.dependency_tree(x)
    assert structure['kind'] == 'parents'
    assert torch.equal(structure['parents'], tree['parents'][-1, 0])
    assert (structure['parents'] == -1).any()  # Lite prunes: pruned tokens have no parent
    plot_prediction(torch.rand(224, 224, 3), TOP5, tmp_path / 'dvit.png', structure=structure)
    assert is_png(tmp_path / 'dvit.png')


def test_biformer_routed_regions_are_the_forward_routing(tmp_path, monkeypatch):
    model = timm.create_model('biformer_tiny').eval()
    x = _image(model)
    # record the routing the attention operator computes inside a real forward, in the drawn block
    stage = 2
    attn = model.stages[stage].blocks[-1].attn
    routed, active = [], []
    route = layers.routing_attn.region_route

    def recording_route(*args, **kwargs):
        out = route(*args, **kwargs)
        if active:
            routed.append(out)
        return out

    monkeypatch.setattr(layers.routing_attn, 'region_route', recording_route)
    attn.register_forward_pre_hook(lambda m, args: active.append(True))
    attn.register_forward_hook(lambda m, args, out: active.clear())
    with torch.no_grad():
        model(x)
    assert len(routed) == 1
    routed.clear()
    structure = model_structure(model, x, query_region=10, stage=stage)
    assert structure['kind'] == 'routing' and structure['grid'] == (7, 7) and structure['topk'] == 16
    assert torch.equal(structure['regions'], routed[0][0, 10])
    with pytest.raises(ValueError, match='stage 2 has 49 regions'):
        model_structure(model, x, query_region=49, stage=stage)
    plot_prediction(torch.rand(224, 224, 3), TOP5, tmp_path / 'biformer.png', structure=structure)
    assert is_png(tmp_path / 'biformer.png')


def test_eval_plot_cli(tmp_path):
    image = tmp_path / 'red.png'
    Image.new('RGB', (60, 50), (200, 10, 10)).save(image)
    result = subprocess.run(
        [sys.executable, str(ROOT / 'eval.py'), '-m', 'dependencyvit_lite_tiny', '--image', str(image), str(image),
         '--plot', str(tmp_path / 'out.png'), '--results-file', str(tmp_path / 'r.json')],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    images = json.loads((tmp_path / 'r.json').read_text())['images']
    assert [Path(i['plot']).name for i in images] == ['out-0.png', 'out-1.png']
    assert all(is_png(i['plot']) for i in images) and '(parents)' in result.stdout
