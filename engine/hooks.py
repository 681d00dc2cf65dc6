"""The model-hook protocol: everything train.py, eval.py and benchmark.py expect of a model beyond timm's API.

A model registered in `backbones` is a timm model first. The scripts rely on the following, and on nothing else.

Forward
    Eval mode: `model(x)` returns logits, (B, num_classes).
    Train mode: a Tensor (B, num_classes), or a tuple of same-shaped logits `(class_logits, distill_logits)` as timm's
    distilled DeiT returns (only after `set_distilled_training(True)`). Never a dict, and never tensors of other
    shapes, so that timm's own test (`torch.cat` of a tuple, then `.mean().backward()`) runs on every model. What a
    training loss needs beyond the logits (auxiliary-head logits, token logits, FLOPs of the kept tokens) the model
    keeps from its last training forward and hands out through the methods below, once (a method that hands a
    term out forgets it, so that no autograd graph stays on the model, where it would block `copy.deepcopy`).

Optional methods (a script calls one only when the model, unwrapped from DDP/compile/EMA, has it)
    `set_distilled_training(enable: bool) -> None`
        train.py calls it when it distils from a teacher. A model with a distillation head then returns
        `(class_logits, distill_logits)` in training (LSNet's distilled variants); a model with extra distillation
        targets records them for `distill_losses` (AS-ViT's LV-ViT token distillation).
    `training_losses(criterion, target) -> Dict[str, Tensor]`
        Weighted loss terms of the last training forward, added to the loss as they are. `criterion` is the
        script's base criterion (cross-entropy, label smoothing or soft-target), `target` the batch's (possibly
        mixed) target. OverLoCK: `aux_loss_weight * criterion(aux_logits, target)` (deep supervision); AS-ViT:
        `budget_weight * |mean GFLOPs - keep_ratio * dense GFLOPs|`.
    `distill_targets: Tuple[str, ...]` (attribute or property), `distill_losses(teacher_targets) -> Dict[str, Tensor]`
        The keys of a teacher's `forward_distill_targets` the last training forward needs (empty: none), and the
        extra distillation terms computed from them, added to the logit distillation term and weighted with it
        (`--distill-alpha`). AS-ViT (LV-ViT, distilled training): ('token_logits',) and the token-level KL over
        the tokens the student kept.
    `forward_distill_targets(x) -> Dict[str, Tensor]`
        As a teacher, when a student asks for `distill_targets`: `'logits'` (B, num_classes), the logits to
        distil towards, and the keys it can give (AS-ViT: `'token_logits'`, (B, N, num_classes)). Otherwise, and
        for a teacher without it, the teacher is called as `teacher(x)`.
    `calibrate_thresholds(x) -> List[float]`
        benchmark.py `--calibrate`: set data-dependent thresholds on a batch before measuring (AS-ViT's token
        pruning thresholds, to put an untrained model at the paper's keep ratios).

Deployment
    `timm.utils.reparameterize_model(model)` is the one entry point: it replaces every submodule that has `fuse()`
    by its result and calls `reparameterize()` in place on the others. Our re-parameterizable blocks implement
    one of the two; models have no method of their own for it.

The functions below are what the scripts call; each takes the model as the script holds it.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.utils import unwrap_model

__all__ = ['calibrate_thresholds', 'distill_losses', 'set_distilled_training', 'split_train_outputs',
           'teacher_targets', 'training_losses']

TrainOutputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def split_train_outputs(outputs: TrainOutputs) -> Tuple[torch.Tensor, torch.Tensor]:
    """(class logits, distillation logits) of a training forward; a plain Tensor serves as both."""
    if isinstance(outputs, torch.Tensor):
        return outputs, outputs
    if isinstance(outputs, (tuple, list)) and len(outputs) == 2 and all(
            isinstance(o, torch.Tensor) and o.shape == outputs[0].shape for o in outputs):
        return outputs[0], outputs[1]
    kind = type(outputs).__name__
    shapes = [tuple(o.shape) for o in outputs if isinstance(o, torch.Tensor)] if isinstance(outputs, (tuple, list)) \
        else list(outputs) if isinstance(outputs, dict) else []
    raise TypeError(f'a training forward must return logits or a pair of same-shaped logits (engine/hooks.py), got '
                    f'a {kind} {shapes}; return extra training terms through training_losses()/distill_losses()')


def set_distilled_training(model: nn.Module, enable: bool = True) -> None:
    """Tell a model that training distils from a teacher (no-op for models without the hook)."""
    hook = getattr(unwrap_model(model), 'set_distilled_training', None)
    if hook is not None:
        hook(enable)


def training_losses(model: nn.Module, criterion: nn.Module, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The model's extra training loss terms of its last training forward ({} without the hook)."""
    hook = getattr(unwrap_model(model), 'training_losses', None)
    return dict(hook(criterion, target)) if hook is not None else {}


def distill_losses(model: nn.Module, targets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The model's extra distillation terms of its last training forward, given the teacher's targets."""
    hook = getattr(unwrap_model(model), 'distill_losses', None)
    return dict(hook(targets)) if hook is not None else {}


def teacher_targets(teacher: nn.Module, x: torch.Tensor,
                    student: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """What a teacher hands a student: {'logits': teacher(x)}, or, when the student's last training forward asks
    for `distill_targets`, the teacher's `forward_distill_targets(x)` (which must hold them)."""
    wanted = tuple(getattr(unwrap_model(student), 'distill_targets', ())) if student is not None else ()
    if not wanted:
        return dict(logits=teacher(x))
    teacher_name = type(unwrap_model(teacher)).__name__
    teacher_hook = getattr(unwrap_model(teacher), 'forward_distill_targets', None)
    if teacher_hook is None:
        raise ValueError(f'the student distils {wanted} from its teacher, but the teacher ({teacher_name}) has no '
                         f'forward_distill_targets(); use a teacher of the same family')
    targets = dict(teacher_hook(x))
    missing = [k for k in ('logits', *wanted) if not isinstance(targets.get(k), torch.Tensor)]
    if missing:
        raise ValueError(f'the teacher ({teacher_name}) gives no {missing} in forward_distill_targets(), which '
                         f'the student needs')
    return targets


def calibrate_thresholds(model: nn.Module, x: torch.Tensor) -> Optional[Sequence[float]]:
    """Run the model's `calibrate_thresholds(x)` if it has one; returns its thresholds, or None."""
    hook = getattr(unwrap_model(model), 'calibrate_thresholds', None)
    return hook(x) if hook is not None else None
