"""Training loss: the base criterion, DeiT-style distillation, and the model's own terms (engine/hooks.py)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import TrainOutputs, distill_losses, split_train_outputs, teacher_targets, training_losses

__all__ = ['DistillationLoss']


class DistillationLoss(nn.Module):
    """Base criterion, DeiT-style knowledge distillation from a frozen teacher, and the student's hook terms.

    weighting 'mix' (DeiT): loss = (1 - alpha) * base(class_logits, target) + alpha * distill;
    weighting 'add' (DynamicViT/AS-ViT): loss = base + alpha * distill.
    distill is, for 'soft', KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2 (per sample), or for
    'hard', cross-entropy against the teacher's argmax, of the student's distillation logits (the second of a
    (class, distill) pair, else its only logits), plus the student's `distill_losses` terms. The student's
    `training_losses` terms are added last, unweighted. The hooks are described in engine/hooks.py.
    """

    def __init__(self, base_criterion: nn.Module, teacher: Optional[nn.Module], kind: str = 'none',
                 alpha: float = 0.5, tau: float = 1.0, weighting: str = 'mix'):
        super().__init__()
        if kind not in ('none', 'soft', 'hard'):
            raise ValueError(f"distillation type must be 'none', 'soft' or 'hard', got {kind!r}")
        if weighting not in ('mix', 'add'):
            raise ValueError(f"distillation weighting must be 'mix' or 'add', got {weighting!r}")
        self.weighting = weighting
        if kind != 'none' and teacher is None:
            raise ValueError(f'distillation type {kind!r} needs a teacher model (--distill-model)')
        self.base_criterion, self.teacher, self.kind, self.alpha, self.tau = base_criterion, teacher, kind, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs: TrainOutputs, target: torch.Tensor,
                model: Optional[nn.Module] = None) -> torch.Tensor:
        """Loss of one training step; `model` is the student whose forward produced `outputs` (for its hooks)."""
        class_logits, dist_logits = split_train_outputs(outputs)
        loss = self.base_criterion(class_logits, target)
        if self.kind != 'none':
            with torch.no_grad():
                targets = teacher_targets(self.teacher, inputs, model)
            teacher_logits = targets['logits']
            if self.kind == 'soft':
                t = self.tau
                distill = F.kl_div(F.log_softmax(dist_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                                   reduction='batchmean', log_target=True) * (t * t)
            else:
                distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
            if model is not None:
                for term in distill_losses(model, targets).values():
                    distill = distill + term
            if self.weighting == 'add':
                loss = loss + distill * self.alpha
            else:
                loss = loss * (1 - self.alpha) + distill * self.alpha
        if model is not None:
            for term in training_losses(model, self.base_criterion, target).values():
                loss = loss + term
        return loss
