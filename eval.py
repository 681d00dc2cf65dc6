#!/usr/bin/env python3
"""Evaluate a model: top-1/top-5 and loss on a validation set, or the top-5 classes of single images.

    python eval.py --model van_b0 --pretrained --data-dir /data/imagenet/val
    python eval.py --model van_b0 --checkpoint van_tiny_754.pth.tar --data-dir /data/imagenet/val   # official file
    python eval.py --model van_b0 --checkpoint output/train/model_best.pth.tar --use-ema --dataset digits
    python eval.py --model van_b0 --checkpoint van_tiny_754.pth.tar --image cat.jpg dog.png

Flags follow timm's validate.py. Checkpoints load with weights_only=True (no code runs) and pass through the
family's checkpoint filter, so official releases and train.py checkpoints both work.
"""
import argparse
import contextlib
import json
import sys
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from timm.data import ImageNetInfo, create_transform, resolve_data_config

import backbones  # noqa: F401  (registers the zoo with timm)
from engine.data import (
    DigitsDataset, ImageFolderDataset, WebDatasetShards, collate_skip_bad, load_image,
)
from engine.loops import evaluate
from engine.cli import create_model_checked, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='model name')
    parser.add_argument('--pretrained', action='store_true', help='the model\'s released weights')
    parser.add_argument('--checkpoint', default='', help='checkpoint file: ours (train.py) or an official release')
    parser.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of a train.py checkpoint')
    parser.add_argument('--num-classes', type=int, default=None, help='default: from the checkpoint')
    parser.add_argument('--dataset', default='folder', choices=['folder', 'wds', 'digits'])
    parser.add_argument('--data-dir', default='', help='folder of <class>/<image> (the validation split itself)')
    parser.add_argument('--shards', default='', help='webdataset shards, e.g. \'val-{000..063}.tar\'')
    parser.add_argument('--num-samples', type=int, default=None, help='samples in the shards (webdataset)')
    parser.add_argument('--digits-size', type=int, default=64)
    parser.add_argument('--image', nargs='+', default=None, help='classify these image files (top-5)')
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--interpolation', default='')
    parser.add_argument('-b', '--batch-size', type=int, default=64)
    parser.add_argument('-j', '--workers', type=int, default=4)
    parser.add_argument('--skip-bad', action='store_true', help='skip (and count) images that fail to decode')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None)
    parser.add_argument('--kernel-impl', default=None, choices=['auto', 'reference'])
    parser.add_argument('--results-file', default='', help='write the result as JSON here')
    return parser


def _classify_images(model, paths, transform, device, amp_autocast, class_names):
    results = []
    for path in paths:
        image = transform(load_image(path)).unsqueeze(0).to(device)
        with torch.no_grad(), amp_autocast():
            probs = model(image).float().softmax(dim=-1)[0]
        top = probs.topk(min(5, probs.numel()))
        entry = dict(image=str(path), top5=[
            dict(index=int(i), label=class_names[int(i)] if class_names else str(int(i)), probability=float(p))
            for p, i in zip(top.values, top.indices)])
        results.append(entry)
        print(path)
        for rank, item in enumerate(entry['top5'], 1):
            print(f'  {rank}. {item["label"]:<40s} {100 * item["probability"]:6.2f}%  (class {item["index"]})')
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.pretrained or args.checkpoint):
        print('eval.py: warning: neither --pretrained nor --checkpoint: evaluating random weights', file=sys.stderr)
    if args.kernel_impl:
        import layers
        layers.set_kernel_impl(args.kernel_impl)
    device = torch.device(args.device)
    model = create_model_checked(args.model, checkpoint=args.checkpoint or None, use_ema=args.use_ema,
                                 pretrained=args.pretrained and not args.checkpoint, num_classes=args.num_classes)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    data_args = {k: v for k, v in dict(img_size=args.img_size, crop_pct=args.crop_pct,
                                       interpolation=args.interpolation).items() if v not in (None, '')}
    data_config = resolve_data_config(data_args, model=model)
    transform = create_transform(**data_config, is_training=False)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp \
        else contextlib.nullcontext
    num_classes = getattr(model, 'num_classes', None)

    if args.image:
        class_names = None
        if args.dataset == 'digits':
            class_names = DigitsDataset.class_names
        elif num_classes == 1000:
            info = ImageNetInfo()
            class_names = [info.index_to_description(i) for i in range(1000)]
        result = dict(model=args.model, images=_classify_images(model, args.image, transform, device, amp_autocast,
                                                                class_names))
    else:
        if args.dataset == 'digits':
            dataset = DigitsDataset('val', args.digits_size, transform)
        elif args.dataset == 'folder':
            if not args.data_dir:
                raise ValueError('--dataset folder needs --data-dir')
            dataset = ImageFolderDataset(args.data_dir, transform, skip_bad=args.skip_bad)
        else:
            if not args.shards or not args.num_samples:
                raise ValueError('--dataset wds needs --shards and --num-samples')
            dataset = WebDatasetShards(args.shards, transform, args.num_samples, shuffle=False,
                                       skip_bad=args.skip_bad)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False,
                            collate_fn=collate_skip_bad if args.skip_bad else None)
        metrics = evaluate(model, loader, device, amp_autocast, args.channels_last)
        result = dict(model=args.model, checkpoint=args.checkpoint or None, use_ema=args.use_ema,
                      pretrained=args.pretrained, input_size=list(data_config['input_size']),
                      crop_pct=data_config['crop_pct'], **metrics)
        print(f'{args.model}: top1 {metrics["top1"]:.3f}  top5 {metrics["top5"]:.3f}  loss {metrics["loss"]:.4f}  '
              f'({metrics["samples"]} images, {metrics["skipped"]} skipped, '
              f'{metrics["images_per_second"]:.1f} img/s)')
    if args.results_file:
        Path(args.results_file).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    run_cli(main, 'eval.py')
