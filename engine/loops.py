"""Training and evaluation loops shared by train.py and eval.py."""
import contextlib
import json
import math
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from timm.utils import accuracy, dispatch_clip_grad, reduce_tensor, unwrap_model

from .losses import DistillationLoss

__all__ = ['TrainingDivergedError', 'evaluate', 'train_one_epoch', 'write_jsonl']


class TrainingDivergedError(RuntimeError):
    """The loss (or the weights) stopped being finite; the message names the epoch, step and loss."""


def train_one_epoch(
        epoch: int,
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: DistillationLoss,
        args,
        device: torch.device,
        lr_scheduler=None,
        amp_autocast=contextlib.nullcontext,
        loss_scaler=None,
        model_ema=None,
        mixup_fn: Optional[Callable] = None,
        start_step: int = 0,
        num_updates: int = 0,
        on_update: Optional[Callable[[int, int], None]] = None,
        log: Optional[Callable[[Dict], None]] = None,
) -> Dict:
    """One epoch, starting at batch `start_step` (a resumed run). Returns the epoch's mean loss and updates.

    `on_update(step_in_epoch, num_updates)` runs after every optimizer update (used to checkpoint mid-epoch).
    """
    accum = args.grad_accum_steps
    model.train()
    student = unwrap_model(model)  # the hooks of engine/hooks.py live on the model itself
    total_steps = start_step + len(loader)
    loss_sum, loss_count = torch.zeros((), device=device), 0
    progress = tqdm(total=total_steps, initial=start_step, desc=f'train {epoch}', disable=not args.is_primary,
                    dynamic_ncols=True, leave=False)
    batch_size_all = args.batch_size * args.world_size
    last_time = time.perf_counter()
    try:
        for step, (inputs, target) in enumerate(loader, start=start_step):
            inputs, target = inputs.to(device), target.to(device)
            if mixup_fn is not None:
                inputs, target = mixup_fn(inputs, target)
            if args.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            update_now = (step + 1) % accum == 0 or step + 1 == total_steps
            sync = contextlib.nullcontext() if update_now or not hasattr(model, 'no_sync') else model.no_sync()
            with sync:
                with amp_autocast():
                    outputs = model(inputs)
                    loss = loss_fn(inputs, outputs, target, student)
                if not math.isfinite(loss.item()):
                    raise TrainingDivergedError(
                        f'training diverged at epoch {epoch}, step {step}: loss is {loss.item()}')
                scaled = loss / accum
                if loss_scaler is not None:
                    loss_scaler(scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                                parameters=model.parameters(), need_update=update_now)
                else:
                    scaled.backward()
                    if update_now:
                        if args.clip_grad:
                            dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
                        optimizer.step()
            loss_detached = loss.detach()
            if args.distributed:
                loss_detached = reduce_tensor(loss_detached, args.world_size)
            loss_sum += loss_detached
            loss_count += 1
            if update_now:
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                if model_ema is not None:
                    model_ema.update(model, step=num_updates)
                if lr_scheduler is not None:
                    lr_scheduler.step_update(num_updates=num_updates)
            now = time.perf_counter()
            lr = optimizer.param_groups[0]['lr']
            if log is not None:
                log(dict(epoch=epoch, step=step, num_updates=num_updates, loss=loss_detached.item(), lr=lr))
            progress.set_postfix(loss=f'{loss_detached.item():.4f}', lr=f'{lr:.2e}',
                                 img_s=f'{batch_size_all / max(now - last_time, 1e-9):.1f}')
            progress.update(1)
            last_time = now
            if update_now and on_update is not None:
                on_update(step + 1, num_updates)
    finally:  # also on divergence, so that the error line is not appended to the bar
        progress.close()
    mean_loss = (loss_sum / max(loss_count, 1)).item()
    return dict(loss=mean_loss, num_updates=num_updates)


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader,
        device: torch.device,
        amp_autocast=contextlib.nullcontext,
        channels_last: bool = False,
        distributed: bool = False,
        world_size: int = 1,
        show_progress: bool = True,
        desc: str = 'eval',
) -> Dict:
    """Top-1/top-5 accuracy and cross-entropy over a loader (sums reduced across ranks).

    Batches may come as (inputs, target) or, from a skip-bad collate, ((inputs, target), skipped).
    """
    model.eval()
    stats = torch.zeros(5, dtype=torch.float64, device=device)  # loss_sum, top1, top5, count, skipped
    start = time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not show_progress, dynamic_ncols=True, leave=False):
        skipped = 0
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], int):
            batch, skipped = batch
            stats[4] += skipped
            if batch is None:
                continue
        inputs, target = batch
        inputs, target = inputs.to(device), target.to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(inputs)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        k = min(5, output.shape[1])
        top1, top5 = accuracy(output, target, topk=(1, k))
        n = inputs.shape[0]
        stats += torch.tensor([F.cross_entropy(output, target, reduction='sum').item(), top1.item() * n / 100,
                               top5.item() * n / 100, n, 0], dtype=torch.float64, device=device)
    elapsed = time.perf_counter() - start
    if distributed:
        torch.distributed.all_reduce(stats)
    loss_sum, top1, top5, count, skipped = stats.tolist()
    count = max(count, 1)
    return dict(loss=loss_sum / count, top1=100 * top1 / count, top5=100 * top5 / count, samples=int(count),
                skipped=int(skipped), seconds=elapsed, images_per_second=count / max(elapsed, 1e-9))


def write_jsonl(path, record: Dict) -> None:
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')
