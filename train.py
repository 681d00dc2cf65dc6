#!/usr/bin/env python3
"""Train a backbone-zoo (or any timm) model on ImageNet-style data, on one process or many with torchrun.

    python train.py --config configs/van/van_b0.yaml --data-dir /data/imagenet --output runs/van_b0
    torchrun --nproc_per_node=8 train.py --config configs/van/van_b0.yaml --data-dir /data/imagenet
    python train.py --config configs/demo/van_b0_digits.yaml          # embedded data set, no network

Flags follow timm's train.py. A YAML recipe (--config) sets defaults; command-line flags override it.
Checkpoints are atomic; a run restarted on the same --output folder resumes exactly where it stopped.
"""
import argparse
import contextlib
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, init_distributed_device, unwrap_model

import backbones  # noqa: F401  (registers the zoo with timm)
from engine.checkpoint import CheckpointManager, get_rng_state, load_checkpoint_file, set_rng_state
from engine.data import (
    DigitsDataset, ImageFolderDataset, ResumableSampler, SeededTransform, WebDatasetShards,
)
from engine.loops import evaluate, train_one_epoch, write_jsonl
from engine.hooks import set_distilled_training
from engine.losses import DistillationLoss
from engine.cli import create_model_checked, run_cli
from engine.config import parse_kv, parse_with_config

_logger = logging.getLogger('train')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', default='', help='YAML recipe whose keys are this script\'s option names')

    group = parser.add_argument_group('model')
    group.add_argument('--model', default='van_b0', help='model name (timm.list_models())')
    group.add_argument('--pretrained', action='store_true', help='start from the model\'s released weights')
    group.add_argument('--initial-checkpoint', default='', help='start from this checkpoint file (ours or official)')
    group.add_argument('--num-classes', type=int, default=None, help='classes (default: from the data set)')
    group.add_argument('--model-kwargs', nargs='*', default=[], type=parse_kv, help='extra model args key=value')
    group.add_argument('--drop', type=float, default=0.0, help='head dropout')
    group.add_argument('--drop-path', type=float, default=None, help='stochastic depth rate')
    group.add_argument('--kernel-impl', default=None, choices=['auto', 'reference'], help='operator implementations')

    group = parser.add_argument_group('data')
    group.add_argument('--dataset', default='folder', choices=['folder', 'wds', 'digits'],
                       help="'folder': <data-dir>/<split>/<class>/<img>; 'wds': webdataset shards; "
                            "'digits': scikit-learn's digits, embedded (no download)")
    group.add_argument('--data-dir', default='', help='root of the image folders')
    group.add_argument('--train-split', default='train')
    group.add_argument('--val-split', default='val')
    group.add_argument('--train-shards', default='', help="webdataset train shards, e.g. 'train-{0000..1023}.tar'")
    group.add_argument('--val-shards', default='', help='webdataset validation shards')
    group.add_argument('--train-num-samples', type=int, default=None, help='samples per epoch (webdataset)')
    group.add_argument('--val-num-samples', type=int, default=None, help='validation samples (webdataset)')
    group.add_argument('--digits-size', type=int, default=64, help='side the 8x8 digits are upscaled to')
    group.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    group.add_argument('--img-size', type=int, default=None, help='square input side (overrides the model\'s)')
    group.add_argument('--crop-pct', type=float, default=None)
    group.add_argument('--interpolation', default='', help='resize interpolation (default: the model\'s)')
    group.add_argument('--mean', type=float, nargs='+', default=None)
    group.add_argument('--std', type=float, nargs='+', default=None)
    group.add_argument('-j', '--workers', type=int, default=4)
    group.add_argument('--pin-mem', action='store_true')

    group = parser.add_argument_group('augmentation and regularization')
    group.add_argument('--aa', default=None, help="RandAugment/AutoAugment policy, e.g. 'rand-m9-mstd0.5-inc1'")
    group.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0))
    group.add_argument('--ratio', type=float, nargs=2, default=(3. / 4., 4. / 3.))
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--color-jitter', type=float, default=0.4)
    group.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    group.add_argument('--remode', default='pixel')
    group.add_argument('--recount', type=int, default=1)
    group.add_argument('--aug-repeats', type=int, default=0, help='repeated augmentation count (0/1: off)')
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off)')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha (0: off)')
    group.add_argument('--cutmix-minmax', type=float, nargs=2, default=None)
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', default='batch', choices=['batch', 'pair', 'elem'])
    group.add_argument('--mixup-off-epoch', type=int, default=0, help='turn mixup off from this epoch (0: never)')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')

    group = parser.add_argument_group('optimization')
    group.add_argument('-b', '--batch-size', type=int, default=128, help='per-process batch size')
    group.add_argument('--grad-accum-steps', type=int, default=1)
    group.add_argument('--opt', default='adamw')
    group.add_argument('--lr', type=float, default=None, help='learning rate (default: lr-base scaled by batch)')
    group.add_argument('--lr-base', type=float, default=1e-3, help='lr for a global batch of lr-base-size')
    group.add_argument('--lr-base-size', type=int, default=1024)
    group.add_argument('--weight-decay', type=float, default=0.05)
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument('--layer-decay', type=float, default=None)
    group.add_argument('--clip-grad', type=float, default=None)
    group.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'],
                       help="'agc': adaptive gradient clipping (clip-grad is then the ratio)")
    group.add_argument('--sched', default='cosine')
    group.add_argument('--epochs', type=int, default=300)
    group.add_argument('--warmup-epochs', type=int, default=5)
    group.add_argument('--warmup-lr', type=float, default=1e-6)
    group.add_argument('--min-lr', type=float, default=1e-5)
    group.add_argument('--cooldown-epochs', type=int, default=0)
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update, not epoch')

    group = parser.add_argument_group('EMA and distillation')
    group.add_argument('--model-ema', action='store_true')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')
    group.add_argument('--distill-type', default='none', choices=['none', 'soft', 'hard'])
    group.add_argument('--distill-model', default='', help='teacher model name')
    group.add_argument('--distill-pretrained', action='store_true', help='teacher from its released weights')
    group.add_argument('--distill-checkpoint', default='', help='teacher checkpoint file')
    group.add_argument('--distill-model-kwargs', nargs='*', default=[], type=parse_kv,
                       help='extra teacher model args key=value')
    group.add_argument('--distill-alpha', type=float, default=0.5)
    group.add_argument('--distill-tau', type=float, default=1.0)
    group.add_argument('--distill-weighting', default='mix', choices=['mix', 'add'],
                       help="'mix': (1-alpha)*base + alpha*distill (DeiT); 'add': base + alpha*distill (AS-ViT)")

    group = parser.add_argument_group('runtime')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--amp', action='store_true', help='mixed precision')
    group.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    group.add_argument('--channels-last', action='store_true')
    group.add_argument('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile backend')
    group.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm across processes (GPU)')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads per process')

    group = parser.add_argument_group('output and logging')
    group.add_argument('--output', default='output/train', help='run folder: checkpoints, logs')
    group.add_argument('--resume', default='', help='resume from this checkpoint (default: <output>/last.pth.tar)')
    group.add_argument('--no-auto-resume', action='store_true', help='ignore an existing <output>/last.pth.tar')
    group.add_argument('--checkpoint-hist', type=int, default=3, help='epoch checkpoints to keep')
    group.add_argument('--checkpoint-interval', type=int, default=0,
                       help='also checkpoint every N optimizer updates (0: only at epoch ends)')
    group.add_argument('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'])
    group.add_argument('--log-wandb', action='store_true')
    group.add_argument('--wandb-project', default='backbone-zoo')
    group.add_argument('--wandb-mode', default='offline', choices=['online', 'offline'])
    group.add_argument('--max-steps-per-epoch', type=int, default=None, help='cut epochs short (smoke tests)')
    return parser


def _build_datasets(args, data_config):
    train_tf = SeededTransform(create_transform(
        data_config['input_size'], is_training=True, scale=tuple(args.scale), ratio=tuple(args.ratio),
        hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.interpolation or data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount), args.seed)
    eval_tf = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])
    if args.dataset == 'digits':
        return DigitsDataset('train', args.digits_size, train_tf), DigitsDataset('val', args.digits_size, eval_tf), 10
    if args.dataset == 'folder':
        if not args.data_dir:
            raise ValueError('--dataset folder needs --data-dir (with <split>/<class>/<image> inside)')
        train = ImageFolderDataset(os.path.join(args.data_dir, args.train_split), train_tf)
        val = ImageFolderDataset(os.path.join(args.data_dir, args.val_split), eval_tf)
        return train, val, train.num_classes
    if not args.train_shards or not args.train_num_samples:
        raise ValueError('--dataset wds needs --train-shards and --train-num-samples (and --num-classes)')
    if args.num_classes is None:
        raise ValueError('--dataset wds needs --num-classes (webdataset shards do not list their classes)')
    train = WebDatasetShards(args.train_shards, train_tf, args.train_num_samples, args.rank, args.world_size,
                             seed=args.seed)
    val = None
    if args.val_shards:
        val = WebDatasetShards(args.val_shards, eval_tf, args.val_num_samples or 0, args.rank, args.world_size,
                               shuffle=False)
    return train, val, args.num_classes


def _make_loader(dataset, args, train: bool, epoch: int = 0, start_step: int = 0):
    """A fresh loader per epoch: its own generator keeps the main RNG stream identical across resumes."""
    generator = torch.Generator().manual_seed(args.seed + 1000 * epoch + args.rank)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, pin_memory=args.pin_mem,
                  generator=generator, persistent_workers=False)
    if isinstance(dataset, WebDatasetShards):
        dataset.set_epoch(epoch)
        return DataLoader(dataset, drop_last=train, **common)
    dataset.set_epoch(epoch)
    sampler = ResumableSampler(len(dataset), args.world_size, args.rank, shuffle=train, seed=args.seed,
                               repeats=args.aug_repeats if train else 1, drop_last=train)
    sampler.set_epoch(epoch, start_step * args.batch_size)
    return DataLoader(dataset, sampler=sampler, drop_last=train, **common)


class _SkipBatches:
    """Iterate a loader without its first `skip` batches (resuming a webdataset epoch part-way)."""

    def __init__(self, loader, skip: int, limit: int):
        self.loader, self.skip, self.limit = loader, skip, limit

    def __len__(self):
        return self.limit - self.skip

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.limit:
                return
            if i >= self.skip:
                yield batch


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    output = Path(args.output)
    device = init_distributed_device(args)
    args.is_primary = args.rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernel_impl:
        import layers
        layers.set_kernel_impl(args.kernel_impl)
    if args.is_primary:
        output.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', handlers=[
            logging.StreamHandler(sys.stdout), logging.FileHandler(output / 'log.txt')])
    torch.manual_seed(args.seed)
    import random
    import numpy as np
    random.seed(args.seed)
    np.random.seed(args.seed)

    model_kwargs = dict(args.model_kwargs)
    if args.drop_path is not None:
        model_kwargs['drop_path_rate'] = args.drop_path
    if args.drop:
        model_kwargs['drop_rate'] = args.drop
    if args.kernel_impl:
        model_kwargs.setdefault('kernel_impl', args.kernel_impl)
    # Data first: the class count of the data decides the head unless --num-classes says otherwise.
    probe = create_model_checked(args.model, **model_kwargs) if args.num_classes is None else None
    data_args = {k: v for k, v in dict(input_size=args.input_size, img_size=args.img_size, crop_pct=args.crop_pct,
                                       interpolation=args.interpolation, mean=args.mean, std=args.std).items()
                 if v not in (None, '')}
    data_config = resolve_data_config(data_args, model=probe or create_model_checked(args.model, **model_kwargs))
    train_set, val_set, num_classes = _build_datasets(args, data_config)
    args.num_classes = args.num_classes or num_classes
    del probe

    model = create_model_checked(args.model, checkpoint=args.initial_checkpoint or None, pretrained=args.pretrained
                                 and not args.initial_checkpoint, num_classes=args.num_classes, **model_kwargs)
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if args.lr is None:
        args.lr = args.lr_base * args.batch_size * args.world_size * args.grad_accum_steps / args.lr_base_size
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp \
        else contextlib.nullcontext
    loss_scaler = NativeScaler(device=device.type) if args.amp and amp_dtype == torch.float16 else None
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) \
        if args.model_ema else None

    teacher = None
    if args.distill_type != 'none':
        teacher = create_model_checked(args.distill_model, checkpoint=args.distill_checkpoint or None,
                                       pretrained=args.distill_pretrained and not args.distill_checkpoint,
                                       num_classes=args.num_classes, **dict(args.distill_model_kwargs))
        teacher = teacher.to(device).eval()
        teacher.requires_grad_(False)
        set_distilled_training(model)

    train_model = model
    if args.torchcompile:
        train_model = torch.compile(model, backend=args.torchcompile)
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == 'cuda' else None)

    steps_per_epoch = len(_make_loader(train_set, args, train=True))
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    updates_per_epoch = (steps_per_epoch + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs,
        step_on_epochs=not args.sched_on_updates, updates_per_epoch=updates_per_epoch)

    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                     prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                     label_smoothing=args.smoothing, num_classes=args.num_classes) if mixup_active else None
    if mixup_active:
        base_criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        base_criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        base_criterion = nn.CrossEntropyLoss()
    loss_fn = DistillationLoss(base_criterion, teacher, args.distill_type, args.distill_alpha, args.distill_tau,
                               args.distill_weighting)

    manager = CheckpointManager(output, keep_last=args.checkpoint_hist, decreasing=args.eval_metric == 'loss')
    config_record = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, tuple,
                                                                           type(None)))}

    def state(epoch: int, step_in_epoch: int, num_updates: int) -> dict:
        return dict(
            version=1, arch=args.model, epoch=epoch, step_in_epoch=step_in_epoch, num_updates=num_updates,
            state_dict=unwrap_model(model).state_dict(), optimizer=optimizer.state_dict(),
            scheduler=lr_scheduler.state_dict(), scaler=loss_scaler.state_dict() if loss_scaler else None,
            state_dict_ema=model_ema.module.state_dict() if model_ema else None, rng=get_rng_state(),
            config=config_record)

    start_epoch, start_step, num_updates = 0, 0, 0
    resume_path = args.resume or (str(manager.last_path) if manager.last_path.exists() and not args.no_auto_resume
                                  else '')
    if resume_path:
        checkpoint = load_checkpoint_file(resume_path)
        missing = [k for k in ('state_dict', 'optimizer', 'scheduler', 'epoch', 'rng') if k not in checkpoint]
        if missing:
            raise ValueError(f'{resume_path} is not a train.py checkpoint (lacks {missing}); '
                             f'use --initial-checkpoint to start from model weights')
        if checkpoint.get('arch') != args.model:
            raise ValueError(f'{resume_path} is a checkpoint of {checkpoint.get("arch")}, not {args.model}')
        unwrap_model(model).load_state_dict(checkpoint['state_dict'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        lr_scheduler.load_state_dict(checkpoint['scheduler'])
        if loss_scaler is not None and checkpoint.get('scaler'):
            loss_scaler.load_state_dict(checkpoint['scaler'])
        if model_ema is not None and checkpoint.get('state_dict_ema'):
            model_ema.module.load_state_dict(checkpoint['state_dict_ema'])
        set_rng_state(checkpoint['rng'])
        manager.restore(checkpoint)
        start_epoch, start_step = checkpoint['epoch'], checkpoint['step_in_epoch']
        num_updates = checkpoint['num_updates']
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
        if args.is_primary:
            _logger.info(f'Resumed from {resume_path}: epoch {start_epoch}, step {start_step}')
    if start_step == 0 and start_epoch > 0:
        lr_scheduler.step(start_epoch)

    if args.log_wandb and args.is_primary:
        import wandb
        wandb.init(project=args.wandb_project, config=config_record, dir=str(output), mode=args.wandb_mode,
                   resume='allow', id=f'{args.model}-{output.name}')

    metrics_path = output / 'metrics.jsonl'
    steps_path = output / 'steps.jsonl'
    if args.is_primary:
        _logger.info(f'{args.model}: {sum(p.numel() for p in model.parameters()):,} params, {args.num_classes} '
                     f'classes, {steps_per_epoch} steps/epoch, world size {args.world_size}, device {device}')
    eval_metrics = None
    for epoch in range(start_epoch, num_epochs):
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        loader = _make_loader(train_set, args, train=True, epoch=epoch, start_step=start_step)
        if isinstance(train_set, WebDatasetShards) or args.max_steps_per_epoch:
            skip = start_step if isinstance(train_set, WebDatasetShards) else 0
            loader = _SkipBatches(loader, skip, steps_per_epoch - (start_step - skip))

        def on_update(step_in_epoch, updates, epoch=epoch):
            if args.checkpoint_interval and updates % args.checkpoint_interval == 0 and args.is_primary \
                    and step_in_epoch < steps_per_epoch:
                manager.save_last(state(epoch, step_in_epoch, updates))

        def log_step(record):
            if args.is_primary:
                write_jsonl(steps_path, record)

        start_time = time.perf_counter()
        train_metrics = train_one_epoch(
            epoch, train_model, loader, optimizer, loss_fn, args, device, lr_scheduler, amp_autocast, loss_scaler,
            model_ema, mixup_fn, start_step, num_updates, on_update, log_step)
        num_updates = train_metrics['num_updates']
        start_step = 0
        epoch_seconds = time.perf_counter() - start_time
        lr_scheduler.step(epoch + 1, None)

        record = dict(epoch=epoch, train_loss=train_metrics['loss'], lr=optimizer.param_groups[0]['lr'],
                      epoch_seconds=epoch_seconds)
        if val_set is not None:
            eval_loader = _make_loader(val_set, args, train=False)
            eval_metrics = evaluate(model, eval_loader, device, amp_autocast, args.channels_last, args.distributed,
                                    args.world_size, show_progress=args.is_primary)
            record.update({f'eval_{k}': v for k, v in eval_metrics.items() if k in ('loss', 'top1', 'top5')})
            if model_ema is not None:
                ema_metrics = evaluate(model_ema.module, eval_loader, device, amp_autocast, args.channels_last,
                                       args.distributed, args.world_size, show_progress=False)
                record.update({f'ema_{k}': v for k, v in ema_metrics.items() if k in ('loss', 'top1', 'top5')})
        if args.is_primary:
            write_jsonl(metrics_path, record)
            _logger.info(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}' for k, v in record.items()))
            if args.log_wandb:
                import wandb
                wandb.log(record, step=epoch)
            metric = record.get(f'eval_{args.eval_metric}')
            manager.save_epoch(state(epoch + 1, 0, num_updates), epoch, metric)
    if args.is_primary and manager.best_metric is not None:
        _logger.info(f'Best eval {args.eval_metric}: {manager.best_metric:.4f} (epoch {manager.best_epoch})')
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == '__main__':
    run_cli(main, 'train.py')
