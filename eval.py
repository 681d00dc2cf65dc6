#!/usr/bin/env python3
"""Evaluate a model: top-1/top-5 and loss on a validation set, or the top-5 classes of single images.

    python eval.py /data/imagenet --model van_b0 --pretrained                  # <root>/val, as timm's validate.py
    python eval.py /data/imagenet --split train -m van_b0 --checkpoint van_tiny_754.pth.tar   # official file
    python eval.py -m van_b0 --checkpoint runs/van_b0/model_best.pth.tar --use-ema --dataset digits
    python eval.py -m biformer_tiny --pretrained --image cat.jpg --plot cat.png   # top-5, drawn with the routing

Flags follow timm's validate.py. Checkpoints load with weights_only=True (no code runs) and pass through the
family's checkpoint filter, so official releases and train.py checkpoints both work.
"""
import csv
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from timm.data import ImageNetInfo, create_transform, resolve_data_config

import backbones  # noqa: F401  (registers the zoo with timm)
from engine.data import (
    DigitsDataset, ImageFolderDataset, WebDatasetShards, collate_skip_bad, load_image, split_folder,
)
from engine.loops import evaluate
from engine.cli import create_model_checked, run_cli
from engine.config import ParseKwargs, make_parser
from engine.deploy import keep_freed_memory, reparameterize, amp_autocast_context


def build_parser():
    parser = make_parser(__doc__)
    parser.add_argument('data', nargs='?', default=None, metavar='DIR',
                        help='data set root: evaluates <DIR>/<split> (or DIR itself if it is a folder of classes)')
    parser.add_argument('--data-dir', default='', help='data set root (as DIR)')
    parser.add_argument('--split', default='val', help="split folder under the root ('val' also finds 'validation')")
    parser.add_argument('-m', '--model', required=True, help='model name')
    parser.add_argument('--pretrained', action='store_true', help='the model\'s released weights')
    parser.add_argument('--checkpoint', default='', help='checkpoint file: ours (train.py) or an official release')
    parser.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of a train.py checkpoint')
    parser.add_argument('--num-classes', type=int, default=None, help='default: from the checkpoint')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='model args key=value')
    parser.add_argument('--reparam', action='store_true',
                        help='evaluate the deployment form: timm\'s reparameterize_model (fused branches), then every '
                             'BatchNorm next to a conv/linear folded into it (engine.deploy)')
    parser.add_argument('--dataset', default='folder', choices=['folder', 'wds', 'digits'])
    parser.add_argument('--shards', default='', help='webdataset shards, e.g. \'val-{000..063}.tar\'')
    parser.add_argument('--num-samples', type=int, default=None, help='samples in the shards (webdataset)')
    parser.add_argument('--digits-size', type=int, default=64)
    parser.add_argument('--image', nargs='+', default=None, help='classify these image files (top-5)')
    parser.add_argument('--plot', default='',
                        help='with --image: draw the image, its top-5 and the model\'s inner decisions (AS-ViT kept '
                             'tokens, DependencyViT parents, BiFormer routing) to this PNG (several images: '
                             '<name>-<n>.png)')
    parser.add_argument('--query-region', type=int, default=None,
                        help='BiFormer --plot: the query region whose routed regions are drawn (default: centre)')
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--interpolation', default='')
    parser.add_argument('--mean', type=float, nargs='+', default=None)
    parser.add_argument('--std', type=float, nargs='+', default=None)
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('-j', '--workers', type=int, default=4)
    parser.add_argument('--skip-bad', action='store_true', help='skip (and count) images that fail to decode')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true',
                        help='autocast in --amp-dtype where the device computes it natively (a CPU needs AVX512-BF16 '
                             'or AMX; elsewhere float32 is used, with a warning)')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None)
    parser.add_argument('--kernel-impl', default=None, choices=['auto', 'reference'])
    parser.add_argument('--results-file', default='', help='write the result here')
    parser.add_argument('--results-format', default=None, choices=['csv', 'json'],
                        help='default: json for a .json file name, else csv (as timm)')
    return parser


def write_results(path, result, results_format=None) -> None:
    """The result as JSON, or as timm's one-row CSV (nested values as JSON text)."""
    path = Path(path)
    results_format = results_format or ('json' if path.suffix.lower() == '.json' else 'csv')
    if results_format == 'json':
        path.write_text(json.dumps(result, indent=2))
        return
    rows = result.get('images') or [result]
    flat = [{k: json.dumps(v) if isinstance(v, (list, dict)) else v
             for k, v in dict(row, model=result['model']).items()} for row in rows]
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)


def _plot_path(plot: str, index: int, count: int) -> Path:
    path = Path(plot)
    return path if count == 1 else path.with_name(f'{path.stem}-{index}{path.suffix or ".png"}')


def _classify_images(model, paths, transform, device, amp_autocast, class_names, args, data_config):
    from engine.plots import model_structure, plot_prediction
    results = []
    for n, path in enumerate(paths):
        image = transform(load_image(path)).unsqueeze(0).to(device)
        with torch.no_grad(), amp_autocast():
            probs = model(image).float().softmax(dim=-1)[0]
        top = probs.topk(min(5, probs.numel()))
        entry = dict(image=str(path), top5=[
            dict(index=int(i), label=class_names[int(i)] if class_names else str(int(i)), probability=float(p))
            for p, i in zip(top.values, top.indices)])
        print(path)
        for rank, item in enumerate(entry['top5'], 1):
            print(f'  {rank}. {item["label"]:<40s} {100 * item["probability"]:6.2f}%  (class {item["index"]})')
        if args.plot:
            structure = model_structure(model, image, query_region=args.query_region)
            mean = torch.tensor(data_config['mean'], device=device)[:, None, None]
            std = torch.tensor(data_config['std'], device=device)[:, None, None]
            shown = (image[0].float() * std + mean).permute(1, 2, 0)
            out = _plot_path(args.plot, n, len(paths))
            plot_prediction(shown, entry['top5'], out, title=f'{args.model}: {Path(path).name}', structure=structure)
            entry['plot'] = str(out)
            print(f'  drawn to {out}' + (f' ({structure["kind"]})' if structure else ''))
        results.append(entry)
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot and not args.image:
        raise ValueError('--plot draws single images: give them with --image')
    if not (args.pretrained or args.checkpoint):
        print('eval.py: warning: neither --pretrained nor --checkpoint: evaluating random weights', file=sys.stderr)
    if args.kernel_impl:
        import layers
        layers.set_kernel_impl(args.kernel_impl)
    device = torch.device(args.device)
    keep_freed_memory()
    model = create_model_checked(args.model, checkpoint=args.checkpoint or None, use_ema=args.use_ema,
                                 pretrained=args.pretrained and not args.checkpoint, num_classes=args.num_classes,
                                 **args.model_kwargs)
    model.to(device).eval()
    if args.reparam:
        model = reparameterize(model)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_args = {k: v for k, v in dict(img_size=args.img_size, input_size=args.input_size, crop_pct=args.crop_pct,
                                       interpolation=args.interpolation, mean=args.mean,
                                       std=args.std).items() if v not in (None, '')}
    data_config = resolve_data_config(data_args, model=model)
    transform = create_transform(**data_config, is_training=False)
    amp_autocast, amp_dtype = amp_autocast_context(args.amp, args.amp_dtype, device)
    num_classes = getattr(model, 'num_classes', None)

    if args.image:
        class_names = None
        if args.dataset == 'digits':
            class_names = DigitsDataset.class_names
        elif num_classes == 1000:
            info = ImageNetInfo()
            class_names = [info.index_to_description(i) for i in range(1000)]
        result = dict(model=args.model, images=_classify_images(model, args.image, transform, device, amp_autocast,
                                                                class_names, args, data_config))
    else:
        if args.torchcompile:
            model = torch.compile(model, backend=args.torchcompile)
        if args.dataset == 'digits':
            dataset = DigitsDataset('val', args.digits_size, transform)
        elif args.dataset == 'folder':
            root = args.data_dir or args.data
            if not root:
                raise ValueError('--dataset folder needs a data root: DIR or --data-dir (with --split, default val)')
            dataset = ImageFolderDataset(split_folder(root, args.split), transform, skip_bad=args.skip_bad)
        else:
            if not args.shards or not args.num_samples:
                raise ValueError('--dataset wds needs --shards and --num-samples')
            dataset = WebDatasetShards(args.shards, transform, args.num_samples, shuffle=False,
                                       skip_bad=args.skip_bad)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False,
                            collate_fn=collate_skip_bad if args.skip_bad else None)
        metrics = evaluate(model, loader, device, amp_autocast, args.channels_last)
        result = dict(model=args.model, checkpoint=args.checkpoint or None, use_ema=args.use_ema,
                      pretrained=args.pretrained, reparam=args.reparam, input_size=list(data_config['input_size']),
                      crop_pct=data_config['crop_pct'], **metrics)
        print(f'{args.model}: top1 {metrics["top1"]:.3f}  top5 {metrics["top5"]:.3f}  loss {metrics["loss"]:.4f}  '
              f'({metrics["samples"]} images, {metrics["skipped"]} skipped, '
              f'{metrics["images_per_second"]:.1f} img/s)')
    if args.results_file:
        write_results(args.results_file, result, args.results_format)
    return 0

if __name__ == '__main__':
    run_cli(main, 'eval.py')
