"""Run one of timm's scripts (train.py, validate.py, benchmark.py, onnx_export.py, inference.py, ...) with our models.

timm has no plugin entry point: a script only knows the models registered when it runs, and ours register on
`import backbones`. This runner imports `backbones`, then runs the script as `__main__` with the remaining arguments:

    python -m engine.timm_run path/to/pytorch-image-models/validate.py --model van_b0 --data-dir ...
    python -m engine.timm_run some.module --model van_b0 ...   # a module on sys.path instead of a file
"""
import os
import runpy
import sys

import backbones  # noqa: F401  (registers every family with timm)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    target, args = argv[0], argv[1:]
    is_file = target.endswith('.py') or os.sep in target
    if is_file and not os.path.isfile(target):
        raise SystemExit(f'engine.timm_run: no script at {target!r} (timm\'s scripts live in a checkout of '
                         f'pytorch-image-models, not in the installed package)')
    sys.argv = [target, *args]
    if is_file:
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # as `python script.py` would
        runpy.run_path(target, run_name='__main__')
    else:
        runpy.run_module(target, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
    main()
