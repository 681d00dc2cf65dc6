"""YAML recipes for the CLIs: every key must name an option of the script's argument parser, every value must fit it.

A recipe is one of ours (configs/<family>/<variant>.yaml) or an `args.yaml` that timm's train.py (or ours) wrote
into a run folder. Keys of timm options that we do not implement are named in one warning and skipped; keys that
are nobody's option (typos) are an error.
"""
import argparse
import difflib
import sys
from pathlib import Path
from typing import Dict

import yaml
from timm.utils import ParseKwargs as _TimmParseKwargs

from .timm_flags import TIMM_UNSUPPORTED

__all__ = ['ConfigError', 'ParseKwargs', 'apply_config', 'make_parser', 'parse_with_config']


class ConfigError(ValueError):
    """A recipe key or value that the CLI does not accept; the message names it."""


class ParseKwargs(_TimmParseKwargs):
    """timm's `key=value` action (values through `ast.literal_eval`, so tuples, None, True/False and numbers are
    Python values, anything else a string), with one clear error for an item that has no '='."""

    def __call__(self, parser, namespace, values, option_string=None):
        for value in values:
            if value and '=' not in value:
                parser.error(f'argument {option_string}: expected key=value, got {value!r}')
        super().__call__(parser, namespace, values, option_string)


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser that never guesses: no prefix matching (`--model` must not become `--model-kwargs`)."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   allow_abbrev=False)


def _kwargs_value(action: argparse.Action, key: str, value) -> Dict:
    if value is None:
        return {}
    if isinstance(value, dict):  # timm's args.yaml: the parsed mapping
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f'config key {key!r}: keys must be names, got {value!r}')
        return dict(value)
    items = value if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in items if not isinstance(v, str) or '=' not in v]
    if bad:
        raise ConfigError(f'config key {key!r}: expected a mapping or key=value items, got {bad[0]!r}')
    namespace = argparse.Namespace()
    action(None, namespace, items)
    return getattr(namespace, action.dest)


def _coerce(action: argparse.Action, key: str, value):
    def one(v):
        if action.type is None or v is None:
            return v
        if action.type in (int, float) and isinstance(v, bool):
            raise ConfigError(f'config key {key!r}: expected {action.type.__name__}, got {v!r}')
        try:
            return action.type(v)
        except (TypeError, ValueError) as e:
            kind = getattr(action.type, '__name__', 'value')
            raise ConfigError(f'config key {key!r}: {v!r} is not a valid {kind}') from e

    if isinstance(action, _TimmParseKwargs):
        return _kwargs_value(action, key, value)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f'config key {key!r}: expected true or false, got {value!r}')
        return value
    if value is None and action.default is None:
        return None
    if value == '' and action.choices is not None and '' not in action.choices:
        return action.default  # timm writes '' for 'unset' (e.g. dataset: '' is its image folder)
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


def _option_index(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Every name a recipe key may use for an option: its dest and each of its long flags (timm's names that we
    accept as aliases, e.g. `kd_model_name` for `distill_model`)."""
    index = {}
    for action in parser._actions:
        if action.dest in ('help', 'config'):
            continue
        index[action.dest] = action
        for flag in action.option_strings:
            if flag.startswith('--'):
                index.setdefault(flag[2:].replace('-', '_'), action)
    return index


def apply_config(parser: argparse.ArgumentParser, path: str, script: str = 'train.py',
                 warn=None) -> Dict:
    """Read a YAML recipe, check every key names a CLI option and every value fits it, and make them defaults.

    Keys that are options of timm's `script` which we do not implement are skipped with one warning (through
    `warn`, default: stderr) listing them; any other unknown key is a ConfigError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} does not exist')
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'config file {path} is not valid YAML: {e}') from e
    if not isinstance(config, dict):
        raise ConfigError(f'config file {path} must hold a mapping of option: value')
    actions = _option_index(parser)
    timm_only = TIMM_UNSUPPORTED.get(script, {})
    keys = {k: str(k).replace('-', '_') for k in config if str(k).replace('-', '_') != 'config'}
    unknown = [k for k, name in keys.items() if name not in actions and name not in timm_only]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(keys[k], actions, n=1)
            hints.append(f'{k!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise ConfigError(f'config file {path}: unknown key(s) ' + ', '.join(hints))
    skipped = [k for k, name in keys.items() if name not in actions]
    if skipped:
        message = (f'config file {path}: timm {script} option(s) not implemented here, ignored: '
                   + ', '.join(str(k) for k in skipped))
        (warn or (lambda m: print(f'{script}: warning: {m}', file=sys.stderr)))(message)
    values = {}
    for k, name in keys.items():
        if name in actions:
            action = actions[name]
            values[action.dest] = _coerce(action, str(k), config[k])
    parser.set_defaults(**values)
    return values


def parse_with_config(parser: argparse.ArgumentParser, argv=None, script: str = 'train.py') -> argparse.Namespace:
    """Parse `--config` first, apply the recipe as defaults, then parse the rest so the command line wins."""
    config_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_parser.add_argument('-c', '--config', default='')
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        try:
            apply_config(parser, known.config, script)
        except ConfigError as e:
            parser.error(str(e))
    return parser.parse_args(argv)
