"""Run folders laid out as timm's train.py does, and the rule that a folder never mixes two configurations.

`<output>/<experiment>/` holds `args.yaml` (the parsed options, written once when the run starts), `summary.csv`
(one row per epoch, timm's `update_summary`), our checkpoints, `log.txt`, `steps.jsonl`, `metrics.jsonl` and the
training curves. A run is resumed explicitly (`--resume FILE`), or by naming it again (`--experiment NAME` of an
existing run, or `--resume auto`: the newest run of the same model under `--output`), so that a scheduler that
restarts the same command after a preemption continues it. A resumed run must mean what it meant: options that
change the result and differ from its `args.yaml` are refused, all in one message.
"""
import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml
from timm.models import safe_model_name
from timm.utils import get_outdir

__all__ = ['RunConflictError', 'FREE_OPTIONS', 'args_yaml', 'check_same_meaning', 'find_latest_run',
           'read_args_yaml', 'resolve_run_folder']

# Options that do not change what a run computes: how it is launched, logged, checkpointed or evaluated.
FREE_OPTIONS = frozenset({
    'config', 'output', 'experiment', 'resume', 'no_auto_resume', 'workers', 'pin_mem', 'device', 'threads',
    'log_interval', 'val_interval', 'validation_batch_size', 'log_wandb', 'wandb_project', 'wandb_mode',
    'checkpoint_hist', 'checkpoint_interval', 'kernel_impl', 'channels_last', 'torchcompile',
})
# Schedules whose shape is defined over the whole run: a longer run would change the lr of every remaining epoch.
_LENGTH_SHAPED_SCHEDULES = ('cosine', 'tanh', 'poly')


class RunConflictError(ValueError):
    """A run folder asked to continue with options that change what it computes; the message lists them."""


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def args_yaml(args: Dict) -> str:
    """The options as timm's train.py writes them to args.yaml (tuples as lists)."""
    return yaml.safe_dump(_plain(dict(args)), default_flow_style=False)


def read_args_yaml(run_dir) -> Optional[Dict]:
    path = Path(run_dir) / 'args.yaml'
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def default_experiment(model: str, img_size: Optional[int]) -> str:
    """timm's default name: <date-time>-<model>[-<image side>]."""
    parts = [datetime.datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(model)]
    if img_size:
        parts.append(str(img_size))
    return '-'.join(parts)


def find_latest_run(output_root, model: str) -> Optional[Path]:
    """The run folder under `output_root` of `model` with the newest last.pth.tar (None if there is none)."""
    root = Path(output_root)
    if not root.is_dir():
        return None
    runs = []
    for run_dir in root.iterdir():
        last = run_dir / 'last.pth.tar'
        saved = read_args_yaml(run_dir) if last.is_file() else None
        if saved is not None and saved.get('model') == model:
            runs.append((last.stat().st_mtime, run_dir))
    return max(runs)[1] if runs else None


def resolve_run_folder(args, img_size: Optional[int]) -> Tuple[Path, Optional[Path], bool]:
    """Where this run lives and what it resumes: (run folder, checkpoint to resume or None, folder is new).

    - `--resume FILE`: that checkpoint; the run continues in `--experiment` if given, else in the checkpoint's own
      folder when it is a run folder (holds args.yaml), else in a new folder.
    - `--experiment NAME` of an existing run: its last.pth.tar (if it got that far), unless --no-auto-resume.
    - `--resume auto` without --experiment: the newest run of the same model under --output, or a new one.
    - otherwise a new folder `<output>/<experiment or timestamp-model-size>`.
    """
    root = Path(args.output or 'output/train')
    resume = args.resume or ''
    if resume and resume != 'auto':
        checkpoint = Path(resume)
        if args.experiment:
            run_dir = root / args.experiment
        elif (checkpoint.parent / 'args.yaml').is_file():
            run_dir = checkpoint.parent
        else:
            run_dir = root / default_experiment(args.model, img_size)
        return run_dir, checkpoint, not (run_dir / 'args.yaml').is_file()
    if args.experiment:
        run_dir = root / args.experiment
        if (run_dir / 'args.yaml').is_file():
            if args.no_auto_resume:
                raise RunConflictError(f'run folder {run_dir} already holds a run and --no-auto-resume forbids '
                                       f'continuing it; choose another --experiment')
            last = run_dir / 'last.pth.tar'
            return run_dir, last if last.is_file() else None, False
        return run_dir, None, True
    if resume == 'auto' and not args.no_auto_resume:
        latest = find_latest_run(root, args.model)
        if latest is not None:
            return latest, latest / 'last.pth.tar', False
    return Path(get_outdir(str(root), default_experiment(args.model, img_size), inc=True)), None, True


def check_same_meaning(saved: Dict, current: Dict, run_dir) -> List[str]:
    """Compare the options a run was started with to this command's. Returns the accepted differences (as
    'key: old -> new' strings, for the log); raises RunConflictError listing every refused one."""
    current = yaml.safe_load(args_yaml(current))
    refused, accepted = [], []
    for key in sorted(set(saved) & set(current)):
        old, new = saved[key], current[key]
        if old == new:
            continue
        change = f'{key}: {old!r} -> {new!r}'
        if key in FREE_OPTIONS:
            accepted.append(change)
        elif key == 'epochs' and current.get('sched') not in _LENGTH_SHAPED_SCHEDULES:
            accepted.append(change)
        elif key == 'epochs':
            refused.append(f'{change} (the {current.get("sched")} schedule is shaped by the run length)')
        else:
            refused.append(change)
    if refused:
        raise RunConflictError(
            f'{run_dir} was started with other options; refusing to mix two configurations in one run '
            f'({"; ".join(refused)}). Use the run\'s own options, or a new --experiment')
    return accepted
