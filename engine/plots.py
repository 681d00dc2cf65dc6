"""Pictures: a run's training curves, and a model's prediction on one image with the inner decisions that make
the model what it is (AS-ViT's kept tokens, DependencyViT's parent arrows, BiFormer's routed regions).

Drawing uses matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend switch). The
decisions are read from the models' own read-only accessors, never recomputed here: `model_structure` returns
them, `plot_prediction` draws them.
"""
import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ['model_structure', 'plot_prediction', 'plot_training_curves']


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> None:
    """Write the PNG next to its final name, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.stem}.', suffix='.png', dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, format='png')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_summary(path) -> Dict[str, List[float]]:
    columns: Dict[str, List[float]] = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                columns.setdefault(key, []).append(number)
    return columns


def plot_training_curves(summary_csv, out_png, title: str = '') -> None:
    """Loss (train and eval), learning rate, eval top-1/top-5 and training images/s per epoch, from the run's
    summary.csv (timm's columns plus train_img_per_s)."""
    data = _read_summary(summary_csv)
    epochs = data.get('epoch', [])
    figure = _figure(10, 7)
    panels = [
        ('loss', [('train_loss', 'train'), ('eval_loss', 'eval')]),
        ('learning rate', [('lr', 'lr')]),
        ('accuracy (%)', [('eval_top1', 'top-1'), ('eval_top5', 'top-5')]),
        ('images/s (train)', [('train_img_per_s', 'img/s')]),
    ]
    for i, (ylabel, series) in enumerate(panels):
        axes = figure.add_subplot(2, 2, i + 1)
        for key, label in series:
            values = data.get(key)
            if values and any(not math.isnan(v) for v in values):
                points = [(e, v) for e, v in zip(epochs, values) if not math.isnan(v)]
                axes.plot([p[0] for p in points], [p[1] for p in points], marker='o', markersize=3, label=label)
        axes.set_xlabel('epoch')
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if len(series) > 1 and axes.get_lines():
            axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out_png)


def _find_block_attention(model, stage: Optional[int]):
    """BiFormer: the routing attention of the last block of `stage` (default: the routing stage with the most
    routed regions per query region that still routes, i.e. topk < regions)."""
    from layers.routing_attn import BiLevelRoutingAttention
    candidates = []
    for s, st in enumerate(model.stages):
        attns = [b.attn for b in st.blocks if isinstance(b.attn, BiLevelRoutingAttention)]
        if attns:
            candidates.append((s, attns[-1]))
    if not candidates:
        raise ValueError(f'{type(model).__name__} has no routing-attention stage')
    if stage is None:
        return max(candidates, key=lambda c: (c[1].topk < c[1].n_win ** 2, c[1].topk))
    for s, attn in candidates:
        if s == stage:
            return s, attn
    raise ValueError(f'stage {stage} has no routing attention; routing stages: {[c[0] for c in candidates]}')


@torch.no_grad()
def model_structure(model, x: torch.Tensor, query_region: Optional[int] = None,
                    stage: Optional[int] = None) -> Optional[Dict]:
    """The inner decisions worth drawing for one image `x` (1, C, H, W), as the model makes them; None for models
    without such a structure.

    - AS-ViT: kind 'kept_tokens', masks (stages, N) bool from `kept_token_masks`, grid.
    - DependencyViT: kind 'parents', parents (N,) of the last layer from `dependency_tree` (-1: pruned), grid.
    - BiFormer: kind 'routing', regions (topk,) routed for `query_region` (default: the centre region) in the last
      block of `stage`, from that block's `routed_regions` on its actual input; region grid.
    """
    from backbones.asvit import AdaptiveSparseViT
    from backbones.biformer import BiFormer
    from backbones.dependencyvit import DependencyViT
    model.eval()
    if isinstance(model, AdaptiveSparseViT):
        masks = model.kept_token_masks(x)[:, 0]
        return dict(kind='kept_tokens', masks=masks, grid=tuple(model.grid_size), stage_blocks=model.pruning_loc)
    if isinstance(model, DependencyViT):
        tree = model.dependency_tree(x)
        return dict(kind='parents', parents=tree['parents'][-1, 0], grid=tuple(model.grid_size),
                    layer=tree['parents'].shape[0] - 1)
    if isinstance(model, BiFormer):
        stage, attn = _find_block_attention(model, stage)
        captured = {}

        def grab(module, args):
            captured['x'] = args[0]

        handle = attn.register_forward_pre_hook(grab)
        try:
            model(x)
        finally:
            handle.remove()
        regions, grid = attn.routed_regions(captured['x'])
        count = grid[0] * grid[1]
        if query_region is None:
            query_region = (grid[0] // 2) * grid[1] + grid[1] // 2
        if not 0 <= query_region < count:
            raise ValueError(f'--query-region {query_region}: stage {stage} has {count} regions '
                             f'({grid[0]}x{grid[1]}), numbered 0..{count - 1} row by row')
        return dict(kind='routing', regions=regions[0, query_region], query_region=query_region, grid=tuple(grid),
                    stage=stage, topk=attn.topk)
    return None


def _cell_extent(index: int, grid: Sequence[int], height: int, width: int):
    rows, cols = grid
    r, c = divmod(int(index), cols)
    return c * width / cols, r * height / rows, width / cols, height / rows


def plot_prediction(image: torch.Tensor, top5: List[Dict], out_png, title: str = '',
                    structure: Optional[Dict] = None) -> None:
    """Draw the model's input image (H, W, 3 in [0, 1]) with its top-5 classes and, if given, the structure from
    `model_structure` over it."""
    from matplotlib.patches import Rectangle
    image = image.clamp(0, 1).cpu().numpy()
    height, width = image.shape[:2]
    panels = 1 + (len(structure['masks']) if structure and structure['kind'] == 'kept_tokens' else
                  1 if structure else 0)
    figure = _figure(3.2 * panels + 4, 3.6)
    axes = figure.add_subplot(1, panels + 1, 1)
    axes.imshow(image)
    axes.set_title('input')
    axes.axis('off')
    if structure and structure['kind'] == 'kept_tokens':
        rows, cols = structure['grid']
        for s, mask in enumerate(structure['masks']):
            axes = figure.add_subplot(1, panels + 1, s + 2)
            shade = (~mask).reshape(rows, cols).float().numpy()
            axes.imshow(image)
            axes.imshow(shade, cmap='gray_r', alpha=0.75 * shade, extent=(0, width, height, 0), vmin=0, vmax=1,
                        interpolation='nearest')
            axes.set_title(f'stage {s + 1}: {int(mask.sum())}/{mask.numel()} kept', fontsize=9)
            axes.axis('off')
    elif structure and structure['kind'] == 'parents':
        axes = figure.add_subplot(1, panels + 1, 2)
        axes.imshow(image)
        rows, cols = structure['grid']
        for child, parent in enumerate(structure['parents'].tolist()):
            if parent < 0:
                continue
            cx, cy, w, h = _cell_extent(child, (rows, cols), height, width)
            px, py, _, _ = _cell_extent(parent, (rows, cols), height, width)
            if parent == child:
                axes.plot(cx + w / 2, cy + h / 2, 'o', color='red', markersize=3)
                continue
            axes.annotate('', xy=(px + w / 2, py + h / 2), xytext=(cx + w / 2, cy + h / 2),
                          arrowprops=dict(arrowstyle='->', color='yellow', lw=0.6, alpha=0.8))
        axes.set_title(f'parents, layer {structure["layer"] + 1} (red: roots)', fontsize=9)
        axes.axis('off')
    elif structure and structure['kind'] == 'routing':
        axes = figure.add_subplot(1, panels + 1, 2)
        axes.imshow(image)
        for region in structure['regions'].tolist():
            x0, y0, w, h = _cell_extent(region, structure['grid'], height, width)
            axes.add_patch(Rectangle((x0, y0), w, h, facecolor='cyan', alpha=0.35, edgecolor='cyan'))
        x0, y0, w, h = _cell_extent(structure['query_region'], structure['grid'], height, width)
        axes.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor='red', lw=2))
        axes.set_title(f'stage {structure["stage"] + 1}: {structure["topk"]} regions routed for the red one',
                       fontsize=9)
        axes.axis('off')
    axes = figure.add_subplot(1, panels + 1, panels + 1)
    labels = [t['label'][:28] for t in top5][::-1]
    axes.barh(range(len(labels)), [100 * t['probability'] for t in top5][::-1], color='tab:blue')
    axes.set_yticks(range(len(labels)))
    axes.set_yticklabels(labels, fontsize=8)
    axes.set_xlabel('probability (%)')
    axes.set_title('top-5')
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out_png)
