"""Training losses: DeiT-style distillation and the extra terms a model asks for through the hook protocol."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['DistillationLoss']


class DistillationLoss(nn.Module):
    """DeiT-style knowledge distillation from a frozen teacher.

    weighting 'mix' (DeiT): loss = (1 - alpha) * base(student, target) + alpha * distill;
    weighting 'add' (DynamicViT/AS-ViT): loss = base + alpha * distill.
    distill is, for 'soft', KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2 (per sample), or for
    'hard', cross-entropy against the teacher's argmax. A student returning (class_logits, dist_logits) (a
    distillation head) is distilled through its second output; a plain student through its only output. A
    student returning (class_logits, dist_logits, token_logits, token_keep) with a teacher that has
    `forward_distill_targets` also gets the token-level KL over its kept tokens (AS-ViT's LV-ViT recipe).
    A student returning dict(main=..., aux=...) (deep supervision, OverLoCK) adds aux_ratio * base(aux, target).
    """

    def __init__(self, base_criterion: nn.Module, teacher: Optional[nn.Module], kind: str = 'none',
                 alpha: float = 0.5, tau: float = 1.0, weighting: str = 'mix', aux_ratio: float = 0.4):
        super().__init__()
        self.aux_ratio = aux_ratio
        if kind not in ('none', 'soft', 'hard'):
            raise ValueError(f"distillation type must be 'none', 'soft' or 'hard', got {kind!r}")
        if weighting not in ('mix', 'add'):
            raise ValueError(f"distillation weighting must be 'mix' or 'add', got {weighting!r}")
        self.weighting = weighting
        if kind != 'none' and teacher is None:
            raise ValueError(f'distillation type {kind!r} needs a teacher model (--distill-model)')
        self.base_criterion, self.teacher, self.kind, self.alpha, self.tau = base_criterion, teacher, kind, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, dict):  # deep supervision (OverLoCK): loss(main) + aux_ratio * base(aux)
            return self.forward(inputs, outputs['main'], target) + self.aux_ratio * self.base_criterion(
                outputs['aux'], target)
        token_logits = token_keep = None
        if isinstance(outputs, (tuple, list)):
            class_logits, dist_logits, *token_outputs = outputs
            if token_outputs:
                token_logits, token_keep = token_outputs
        else:
            class_logits = dist_logits = outputs
        base = self.base_criterion(class_logits, target)
        if self.kind == 'none':
            return base
        teacher_tokens = None
        with torch.no_grad():
            if token_logits is not None and hasattr(self.teacher, 'forward_distill_targets'):
                teacher_logits, teacher_tokens = self.teacher.forward_distill_targets(inputs)
            else:
                teacher_logits = self.teacher(inputs)
        if self.kind == 'soft':
            t = self.tau
            distill = F.kl_div(F.log_softmax(dist_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                               reduction='batchmean', log_target=True) * (t * t)
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        if teacher_tokens is not None:
            distill = distill + _token_kl(token_logits, teacher_tokens, token_keep)
        if self.weighting == 'add':
            return base + distill * self.alpha
        return base * (1 - self.alpha) + distill * self.alpha


def _token_kl(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) per token over the tokens the student kept (keep > 0.5), as AS-ViT/DynamicViT."""
    kept = keep.reshape(-1) > 0.5
    if not kept.any():
        return student.new_zeros(())
    student = student.reshape(-1, student.shape[-1])[kept]
    teacher = teacher.reshape(-1, teacher.shape[-1])[kept]
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction='batchmean',
                    log_target=True)
