#!/usr/bin/env python3
"""Train a backbone-zoo (or any timm) model on ImageNet-style data, on one process or many with torchrun.

    python train.py /data/imagenet -c configs/van/van_b0.yaml --output runs --experiment van_b0
    torchrun --nproc_per_node=8 train.py /data/imagenet -c configs/van/van_b0.yaml --resume auto
    python train.py -c configs/demo/van_b0_digits.yaml          # embedded data set, no network

Flags follow timm's train.py, with timm's names and meanings. A YAML recipe (-c/--config, ours or a timm
args.yaml) sets defaults; command-line flags override it. Each run gets its own folder <output>/<experiment>
(args.yaml, summary.csv, curves.png, checkpoints, logs). Checkpoints are atomic; naming an existing run again
(--experiment NAME, or --resume auto) resumes it exactly where it stopped, refusing options that would change it.
"""
import argparse
import logging
import sys
import time

import torch
import timm
import torch.nn as nn
from torch.utils.data import DataLoader

from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, init_distributed_device, trim_summary, unwrap_model, update_summary

import backbones  # noqa: F401  (registers the zoo with timm)
from engine.checkpoint import CheckpointManager, get_rng_state, load_checkpoint_file, set_rng_state
from engine.deploy import keep_freed_memory, amp_autocast_context
from engine.data import (
    DigitsDataset, ImageFolderDataset, ResumableSampler, SeededTransform, WebDatasetShards, split_folder,
)
from engine.loops import TrainingDivergedError, evaluate, train_one_epoch, write_jsonl
from engine.hooks import set_distilled_training
from engine.losses import DistillationLoss
from engine.cli import create_model_checked, run_cli
from engine.config import ParseKwargs, make_parser, parse_with_config
from engine.plots import plot_training_curves
from engine.runs import args_yaml, check_same_meaning, read_args_yaml, resolve_run_folder

_logger = logging.getLogger('train')


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument('-c', '--config', default='',
                        help='YAML recipe whose keys are this script\'s option names (or a timm args.yaml)')

    group = parser.add_argument_group('model')
    group.add_argument('-m', '--model', default='van_b0', help='model name (timm.list_models())')
    group.add_argument('--pretrained', action='store_true', help='start from the model\'s released weights')
    group.add_argument('--initial-checkpoint', default='', help='start from this checkpoint file (ours or official)')
    group.add_argument('--num-classes', type=int, default=None, help='classes (default: from the data set)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra model args key=value (values as Python literals, as timm)')
    group.add_argument('--drop', type=float, default=0.0, help='head dropout')
    group.add_argument('--drop-path', type=float, default=None, help='stochastic depth rate')
    group.add_argument('--grad-checkpointing', action='store_true', help='checkpoint activations through blocks')
    group.add_argument('--kernel-impl', default=None, choices=['auto', 'reference'], help='operator implementations')

    group = parser.add_argument_group('data')
    parser.add_argument('data', nargs='?', default=None, metavar='DIR', help='data set root (as --data-dir)')
    group.add_argument('--dataset', default='folder', choices=['folder', 'wds', 'digits'],
                       help="'folder': <data-dir>/<split>/<class>/<img>; 'wds': webdataset shards; "
                            "'digits': scikit-learn's digits, embedded (no download)")
    group.add_argument('--data-dir', default='', help='root of the image folders')
    group.add_argument('--train-split', default='train')
    group.add_argument('--val-split', default='val', help="validation split ('val' and 'validation' both match)")
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
    group.add_argument('--vflip', type=float, default=0.0)
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
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None,
                       help='per-process validation batch size (default: --batch-size)')
    group.add_argument('--grad-accum-steps', type=int, default=1)
    group.add_argument('--opt', default='adamw')
    group.add_argument('--opt-eps', type=float, default=None, help='optimizer epsilon (default: the optimizer\'s)')
    group.add_argument('--opt-betas', type=float, nargs='+', default=None, help='optimizer betas')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra optimizer args key=value')
    group.add_argument('--lr', type=float, default=None, help='learning rate (default: lr-base scaled by batch)')
    group.add_argument('--lr-base', type=float, default=1e-3, help='lr for a global batch of lr-base-size')
    group.add_argument('--lr-base-size', type=int, default=1024)
    group.add_argument('--lr-base-scale', default='', choices=['', 'linear', 'sqrt'],
                       help="how the lr scales with the global batch (default, as timm: 'sqrt' for adam-family and "
                            "lamb optimizers, else 'linear')")
    group.add_argument('--weight-decay', type=float, default=0.05)
    group.add_argument('--momentum', type=float, default=0.9)
    group.add_argument('--layer-decay', type=float, default=None)
    group.add_argument('--layer-decay-min-scale', type=float, default=0.0)
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None)
    group.add_argument('--clip-grad', type=float, default=None)
    group.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'],
                       help="'agc': adaptive gradient clipping (clip-grad is then the ratio)")
    group.add_argument('--sched', default='cosine')
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update, not epoch')
    group.add_argument('--epochs', type=int, default=300)
    group.add_argument('--warmup-epochs', type=int, default=5)
    group.add_argument('--warmup-lr', type=float, default=1e-6)
    group.add_argument('--warmup-prefix', action='store_true', help='warmup epochs come before the schedule')
    group.add_argument('--min-lr', type=float, default=1e-5)
    group.add_argument('--cooldown-epochs', type=int, default=0)
    group.add_argument('--decay-epochs', type=float, default=90, help="'step' schedule: epochs between decays")
    group.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270],
                       help="'multistep' schedule: decay epochs")
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, help="'step'/'multistep' decay factor")
    group.add_argument('--lr-cycle-mul', type=float, default=1.0)
    group.add_argument('--lr-cycle-decay', type=float, default=0.5)
    group.add_argument('--lr-cycle-limit', type=int, default=1)
    group.add_argument('--lr-k-decay', type=float, default=1.0)
    group.add_argument('--lr-noise', type=float, nargs='+', default=None)
    group.add_argument('--lr-noise-pct', type=float, default=0.67)
    group.add_argument('--lr-noise-std', type=float, default=1.0)

    group = parser.add_argument_group('EMA and distillation')
    group.add_argument('--model-ema', action='store_true')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')
    group.add_argument('--distill-type', default='none', choices=['none', 'soft', 'hard'],
                       help="'soft': KL at temperature tau; 'hard': cross-entropy to the teacher's argmax "
                            "(default 'none', or 'soft' when a teacher is named)")
    group.add_argument('--distill-model', '--kd-model-name', default='', help='teacher model name')
    group.add_argument('--kd-distill-type', default='logit', choices=['logit', 'token'],
                       help="timm's name: 'logit' distills through the student's logits; 'token' through its "
                            "distillation head (a student returning (class_logits, dist_logits) uses it either way)")
    group.add_argument('--kd-token-distill-type', default=None, choices=['soft', 'hard'],
                       help="timm's name for --distill-type with --kd-distill-type token")
    group.add_argument('--kd-loss-type', default='kl', choices=['kl'], help="timm's name; only 'kl' (as timm)")
    group.add_argument('--distill-pretrained', action='store_true', help='teacher from its released weights')
    group.add_argument('--distill-checkpoint', default='', help='teacher checkpoint file')
    group.add_argument('--distill-model-kwargs', nargs='*', default={}, action=ParseKwargs,
                       help='extra teacher model args key=value')
    group.add_argument('--distill-alpha', type=float, default=0.5)
    group.add_argument('--distill-tau', '--kd-temperature', type=float, default=1.0)
    group.add_argument('--distill-loss-weight', type=float, default=None,
                       help="timm's weighting: alone, loss = task + w * distill ('add', alpha=w); with "
                            "--task-loss-weight t, t + w must be 1 ('mix') or t must be 1 ('add')")
    group.add_argument('--task-loss-weight', type=float, default=None,
                       help="timm's weighting: alone, loss = t * task + (1 - t) * distill ('mix', alpha=1-t)")
    group.add_argument('--distill-weighting', default='mix', choices=['mix', 'add'],
                       help="'mix': (1-alpha)*base + alpha*distill (DeiT); 'add': base + alpha*distill (AS-ViT)")

    group = parser.add_argument_group('runtime')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--amp', action='store_true',
                       help='mixed precision in --amp-dtype where the device computes it natively (a CPU needs '
                            'AVX512-BF16 or AMX; elsewhere float32, with a warning)')
    group.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    group.add_argument('--channels-last', action='store_true')
    group.add_argument('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile backend')
    group.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm across processes (GPU)')
    group.add_argument('--seed', type=int, default=42)
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads per process')

    group = parser.add_argument_group('output and logging')
    group.add_argument('--output', default='output/train', help='root folder of the runs')
    group.add_argument('--experiment', default='',
                       help='run folder name under --output (default: <date-time>-<model>-<size>); naming an '
                            'existing run resumes it')
    group.add_argument('--resume', default='',
                       help="resume this checkpoint file; 'auto': the newest run of this model under --output "
                            "(a new run if there is none)")
    group.add_argument('--no-auto-resume', action='store_true',
                       help='never continue an existing run (an existing --experiment is then an error)')
    group.add_argument('--checkpoint-hist', type=int, default=3, help='epoch checkpoints to keep')
    group.add_argument('--checkpoint-interval', type=int, default=0,
                       help='also checkpoint every N optimizer updates (0: only at epoch ends)')
    group.add_argument('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'])
    group.add_argument('--log-interval', type=int, default=50, help='log a line every N steps (steps.jsonl: all)')
    group.add_argument('--val-interval', type=int, default=1, help='evaluate every N epochs (and after the last)')
    group.add_argument('--log-wandb', action='store_true')
    group.add_argument('--wandb-project', default='backbone-zoo')
    group.add_argument('--wandb-mode', default='offline', choices=['online', 'offline'])
    group.add_argument('--max-steps-per-epoch', type=int, default=None, help='cut epochs short (smoke tests)')
    return parser


def _build_datasets(args, data_config):
    train_tf = SeededTransform(create_transform(
        data_config['input_size'], is_training=True, scale=tuple(args.scale), ratio=tuple(args.ratio),
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.interpolation or data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount), args.seed)
    eval_tf = create_transform(
        data_config['input_size'], is_training=False, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], crop_pct=data_config['crop_pct'])
    if args.dataset == 'digits':
        return DigitsDataset('train', args.digits_size, train_tf), DigitsDataset('val', args.digits_size, eval_tf), 10
    if args.dataset == 'folder':
        if not args.data_dir:
            raise ValueError('--dataset folder needs a data root (DIR or --data-dir, with <split>/<class>/<image>)')
        train = ImageFolderDataset(split_folder(args.data_dir, args.train_split, required=True), train_tf)
        val = ImageFolderDataset(split_folder(args.data_dir, args.val_split, required=True), eval_tf)
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
    batch_size = args.batch_size if train else (args.validation_batch_size or args.batch_size)
    common = dict(batch_size=batch_size, num_workers=args.workers, pin_memory=args.pin_mem,
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


def _default_img_size(args):
    """The image side that timm's default run name ends with."""
    if args.img_size or args.input_size:
        return args.img_size or args.input_size[-1]
    try:
        return timm.get_pretrained_cfg(args.model).input_size[-1]
    except (RuntimeError, AttributeError):  # unknown names fail later with a clear error
        return None


def _resolve_distillation(args) -> None:
    """Map timm's distillation options onto ours: a named teacher turns distillation on, and timm's loss weights
    become our alpha and weighting."""
    if args.kd_token_distill_type:
        args.distill_type = args.kd_token_distill_type
    if args.distill_model and args.distill_type == 'none':
        args.distill_type = 'soft'
    task, distill = args.task_loss_weight, args.distill_loss_weight
    if task is None and distill is None:
        return
    if task is None:
        args.distill_weighting, args.distill_alpha = 'add', distill
    elif distill is None:
        args.distill_weighting, args.distill_alpha = 'mix', 1.0 - task
    elif abs(task + distill - 1.0) < 1e-9:
        args.distill_weighting, args.distill_alpha = 'mix', distill
    elif task == 1.0:
        args.distill_weighting, args.distill_alpha = 'add', distill
    else:
        raise ValueError(f'--task-loss-weight {task} with --distill-loss-weight {distill}: only weights that sum to '
                         f'1 (mix) or a task weight of 1 (add) are supported')


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    args_record = dict(vars(args))  # what args.yaml holds: the options as parsed, as timm writes them
    args.data_dir = args.data_dir or args.data or ''
    device = init_distributed_device(args)
    keep_freed_memory()
    args.is_primary = args.rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernel_impl:
        import layers
        layers.set_kernel_impl(args.kernel_impl)
    _resolve_distillation(args)

    # The run folder: rank 0 decides (a new folder's name holds the time), every rank checks the resume.
    resolved = [None]
    if args.is_primary:
        resolved = [resolve_run_folder(args, _default_img_size(args))]
    if args.distributed:
        torch.distributed.broadcast_object_list(resolved, src=0)
    output, resume_path, new_run = resolved[0]
    saved_args = None if new_run else read_args_yaml(output)
    accepted_changes = check_same_meaning(saved_args, args_record, output) if saved_args else []
    if args.is_primary:
        output.mkdir(parents=True, exist_ok=True)
        if saved_args is None:
            (output / 'args.yaml').write_text(args_yaml(args_record))
        logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', handlers=[
            logging.StreamHandler(sys.stdout), logging.FileHandler(output / 'log.txt')])
        _logger.info(f'Run folder {output}')
        for change in accepted_changes:
            _logger.info(f'Option changed on resume (does not change the run): {change}')
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
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if args.lr is None:
        global_batch = args.batch_size * args.world_size * args.grad_accum_steps
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
        if args.is_primary:
            _logger.info(f'lr {args.lr:g}: lr-base {args.lr_base:g} for a batch of {args.lr_base_size}, scaled '
                         f'({scale}) to the global batch {global_batch}')
    opt_kwargs = dict(args.opt_kwargs)
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay,
                                    layer_decay_min_scale=args.layer_decay_min_scale,
                                    layer_decay_no_opt_scale=args.layer_decay_no_opt_scale, **opt_kwargs)
    amp_autocast, amp_dtype = amp_autocast_context(args.amp, args.amp_dtype, device)
    loss_scaler = NativeScaler(device=device.type) if amp_dtype == torch.float16 else None
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
        warmup_prefix=args.warmup_prefix, decay_epochs=args.decay_epochs, decay_milestones=args.decay_milestones,
        decay_rate=args.decay_rate, cycle_mul=args.lr_cycle_mul, cycle_decay=args.lr_cycle_decay,
        cycle_limit=args.lr_cycle_limit, k_decay=args.lr_k_decay, noise=args.lr_noise, noise_pct=args.lr_noise_pct,
        noise_std=args.lr_noise_std, noise_seed=args.seed,
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
    config_record = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, tuple, dict,
                                                                           type(None)))}
    last_loss = {'epoch': 0, 'step': 0, 'loss': None}

    def state(epoch: int, step_in_epoch: int, num_updates: int) -> dict:
        # a checkpoint must never hold diverged weights: the last good one stays the one to resume from
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDivergedError(
                f'training diverged at epoch {last_loss["epoch"]}, step {last_loss["step"]}: the weights are no '
                f'longer finite (last loss {last_loss["loss"]})')
        return dict(
            version=1, arch=args.model, epoch=epoch, step_in_epoch=step_in_epoch, num_updates=num_updates,
            state_dict=unwrap_model(model).state_dict(), optimizer=optimizer.state_dict(),
            scheduler=lr_scheduler.state_dict(), scaler=loss_scaler.state_dict() if loss_scaler else None,
            state_dict_ema=model_ema.module.state_dict() if model_ema else None, rng=get_rng_state(),
            config=config_record)

    start_epoch, start_step, num_updates = 0, 0, 0
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
    summary_path = output / 'summary.csv'
    if args.is_primary:
        trim_summary(str(summary_path), start_epoch)  # a resumed epoch's row is written again when it ends
    eval_metrics = None
    try:
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
                last_loss.update(epoch=record['epoch'], step=record['step'], loss=record['loss'])
                if args.is_primary:
                    write_jsonl(steps_path, record)
                    if args.log_interval and record['step'] % args.log_interval == 0:
                        _logger.info(f'epoch {record["epoch"]} step {record["step"]}/{steps_per_epoch} '
                                     f'loss {record["loss"]:.4f} lr {record["lr"]:.3e}')

            start_time, steps_run = time.perf_counter(), steps_per_epoch - start_step
            train_metrics = train_one_epoch(
                epoch, train_model, loader, optimizer, loss_fn, args, device, lr_scheduler, amp_autocast, loss_scaler,
                model_ema, mixup_fn, start_step, num_updates, on_update, log_step)
            num_updates = train_metrics['num_updates']
            start_step = 0
            epoch_seconds = time.perf_counter() - start_time
            lr_scheduler.step(epoch + 1, None)

            img_per_s = steps_run * args.batch_size * args.world_size / max(epoch_seconds, 1e-9)
            record = dict(epoch=epoch, train_loss=train_metrics['loss'], lr=optimizer.param_groups[0]['lr'],
                          epoch_seconds=epoch_seconds, img_per_s=img_per_s)
            eval_metrics = None
            validate_now = (epoch + 1) % max(args.val_interval, 1) == 0 or epoch + 1 == num_epochs
            if val_set is not None and validate_now:
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
                _logger.info(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                                      for k, v in record.items()))
                if args.log_wandb:
                    import wandb
                    wandb.log(record, step=epoch)
                metric = record.get(f'eval_{args.eval_metric}')
                manager.save_epoch(state(epoch + 1, 0, num_updates), epoch, metric)
                # timm's summary.csv; epochs without validation get empty-valued eval columns, so columns align
                summary_eval = {k: eval_metrics[k] for k in ('loss', 'top1', 'top5')} if eval_metrics else (
                    dict.fromkeys(('loss', 'top1', 'top5'), float('nan')) if val_set is not None else None)
                lrs = [group['lr'] for group in optimizer.param_groups]
                update_summary(epoch, dict(loss=train_metrics['loss'], img_per_s=img_per_s), summary_eval,
                               str(summary_path), lr=sum(lrs) / len(lrs))
                plot_training_curves(summary_path, output / 'curves.png', title=f'{args.model} ({output.name})')
    except TrainingDivergedError as e:
        last = manager.last_path if manager.last_path.exists() else None
        raise TrainingDivergedError(f'{e}; last good checkpoint: {last or "none"}') from None
    if args.is_primary and manager.best_metric is not None:
        _logger.info(f'Best eval {args.eval_metric}: {manager.best_metric:.4f} (epoch {manager.best_epoch})')
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == '__main__':
    run_cli(main, 'train.py')
