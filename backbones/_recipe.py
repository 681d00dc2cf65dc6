"""YAML recipes for the CLIs, validated against the argument parser; model creation from checkpoints."""
import argparse
import difflib
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

import timm
import yaml

from ._checkpoint import load_checkpoint_file

__all__ = ['ConfigError', 'apply_config', 'create_model_checked', 'parse_kv', 'parse_with_config', 'run_cli']


class ConfigError(ValueError):
    """A recipe key or value that the CLI does not accept; the message names it."""


def parse_kv(text: str):
    """argparse type for `key=value` model arguments: ints and floats become numbers, true/false booleans;
    anything else (including 'none') stays a string."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {'true': True, 'false': False}.get(value.lower(), value)


def _coerce(action: argparse.Action, key: str, value):
    def one(v):
        if action.type is None or v is None:
            return v
        if action.type in (int, float) and isinstance(v, bool):
            raise ConfigError(f'config key {key!r}: expected {action.type.__name__}, got {v!r}')
        try:
            return action.type(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f'config key {key!r}: {v!r} is not a valid {getattr(action.type, "__name__", "value")}') from e

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f'config key {key!r}: expected true or false, got {value!r}')
        return value
    if action.nargs in ('+', '*') or isinstance(action.nargs, int):
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise ConfigError(f'config key {key!r}: expected {action.nargs} values, got {value!r}')
        value = [one(v) for v in values]
        bad = [v for v in value if action.choices is not None and v not in action.choices]
    else:
        if isinstance(value, (list, dict)):
            raise ConfigError(f'config key {key!r}: expected a single value, got {value!r}')
        value = one(value)
        bad = [value] if action.choices is not None and value not in action.choices else []
    if bad:
        raise ConfigError(f'config key {key!r}: {bad[0]!r} is not one of {list(action.choices)}')
    return value


def apply_config(parser: argparse.ArgumentParser, path: str) -> Dict:
    """Read a YAML recipe, check every key names a CLI option and every value fits it, and make them defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'config file {path} is not valid YAML: {e}') from e
    if not isinstance(config, dict):
        raise ConfigError(f'config file {path} must hold a mapping of option: value')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    unknown = [k for k in config if k.replace('-', '_') not in actions]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k.replace('-', '_'), actions, n=1)
            hints.append(f'{k!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise ConfigError(f'config file {path}: unknown key(s) ' + ', '.join(hints))
    values = {k.replace('-', '_'): _coerce(actions[k.replace('-', '_')], k, v) for k, v in config.items()}
    parser.set_defaults(**values)
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse `--config` first, apply the recipe as defaults, then parse the rest so the command line wins."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        try:
            apply_config(parser, known.config)
        except ConfigError as e:
            parser.error(str(e))
    return parser.parse_args(argv)


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
    if use_ema:
        if obj.get('state_dict_ema') is None:
            raise ValueError(f'--use-ema: checkpoint {checkpoint} holds no EMA weights (no state_dict_ema)')
        state_dict = obj['state_dict_ema']
    else:
        state_dict = obj.get('state_dict', obj.get('model', obj))
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}

    # Convert to our layout first, so the checkpoint's own class count is known: eval of a checkpoint trained
    # on 10 classes must keep its head, while an explicit num_classes=... re-initialises it for fine-tuning.
    model = timm.create_model(model_name, **kwargs)
    filter_fn = getattr(sys.modules[timm.models.model_entrypoint(model_name.split('.')[0]).__module__],
                        'checkpoint_filter_fn', None)
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
    """Run a CLI's main(); errors about the user's input end with one clear line and exit code 2, no traceback."""
    from ._checkpoint import CheckpointError
    from ._data import BadImageError
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, CheckpointError, BadImageError) as e:
        message = str(e).strip()
        if 'Original Traceback' in message:  # raised in a DataLoader worker: keep the worker's own message
            message = message.splitlines()[-1].split(': ', 1)[-1]
        print(f'{prog}: error: {message}', file=sys.stderr)
        sys.exit(2)
