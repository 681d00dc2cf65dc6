"""YAML recipes for the CLIs: every key must name an option of the script's argument parser, every value must fit it."""
import argparse
import difflib
from pathlib import Path
from typing import Dict

import yaml

__all__ = ['ConfigError', 'apply_config', 'parse_kv', 'parse_with_config']


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
