"""What the three scripts share around the model: creation by name with clear errors, checkpoint loading, and
running a main() so that a user's mistake ends in one line instead of a traceback."""
import difflib
import sys
from typing import Callable, Optional

import timm

import backbones
from .checkpoint import CheckpointError, load_checkpoint_file
from .data import BadImageError
from .loops import TrainingDivergedError

__all__ = ['create_model_checked', 'run_cli']


def create_model_checked(model_name: str, checkpoint: Optional[str] = None, use_ema: bool = False, **kwargs):
    """timm.create_model with a clear error for unknown names, optionally loading a checkpoint file.

    The checkpoint may be ours (train.py's, with 'state_dict'/'state_dict_ema') or an official release: it goes
    through the family's checkpoint filter via timm's pretrained path, which also adapts num_classes/in_chans.
    """
    if model_name not in timm.list_models() and model_name.split('.')[0] not in timm.list_models():
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        raise ValueError(f'Unknown model {model_name!r}' + (f'; did you mean {", ".join(close)}?' if close else ''))
    if not checkpoint:
        return timm.create_model(model_name, **kwargs)
    kwargs.pop('pretrained', None)
    obj = load_checkpoint_file(checkpoint)
    if use_ema and not isinstance(obj.get('state_dict_ema'), dict):
        raise ValueError(f'--use-ema: checkpoint {checkpoint} holds no EMA weights (no state_dict_ema)')
    state_dict = backbones.unwrap_state_dict(obj, ema='require' if use_ema else 'skip')

    # Convert to our layout first, so the checkpoint's own class count is known: eval of a checkpoint trained
    # on 10 classes must keep its head, while an explicit num_classes=... re-initialises it for fine-tuning.
    model = timm.create_model(model_name, **kwargs)
    filter_fn = backbones.get_checkpoint_filter(model_name)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    classifier = model.pretrained_cfg.get('classifier')
    head_weight = state_dict.get(f'{classifier}.weight') if classifier else None
    checkpoint_classes = head_weight.shape[0] if head_weight is not None else model.num_classes
    if kwargs.get('num_classes') is None:
        kwargs['num_classes'] = checkpoint_classes
    overlay = dict(state_dict=state_dict, num_classes=checkpoint_classes)
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def run_cli(main: Callable[[], int], prog: str) -> None:
    """Run a CLI's main(); errors about the user's input end with one clear line and exit code 2, a diverged
    training run with one line and exit code 1; no traceback."""
    try:
        sys.exit(main())
    except TrainingDivergedError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, CheckpointError, BadImageError) as e:
        message = str(e).strip()
        if 'Original Traceback' in message:  # raised in a DataLoader worker: keep the worker's own message
            message = message.splitlines()[-1].split(': ', 1)[-1]
        print(f'{prog}: error: {message}', file=sys.stderr)
        sys.exit(2)
