#!/usr/bin/env python3
"""Profile models: parameters, FLOPs/MACs (fvcore), latency, throughput and peak memory; or time operators.

    python benchmark.py van_b0 van_b1 --batch-sizes 1 8          # named models
    python benchmark.py -m van_b0 -b 8 --bench both --amp --results-file van_b0.csv   # timm's flags
    python benchmark.py 'van*' --compare-impl --batch-sizes 8    # fast vs reference kernels, side by side
    python benchmark.py --all --no-timing --json models.json     # every zoo model, params and FLOPs only
    python benchmark.py --ops                                    # every layers operator, fast vs reference
    python benchmark.py zoo_convit_tiny --compare-model convit_tiny --batch-sizes 8   # vs timm's own ConViT
    python benchmark.py 'lsnet*' --compare-fused --batch-sizes 8                 # BatchNorm folding gain
    python benchmark.py van_b0 --compare-deploy --batch-sizes 16                 # the one-call deployment form
    python benchmark.py van_b0 --compare-compile --batch-sizes 16                # torch.compile vs eager
    python benchmark.py asvit_deit_small --real-images --calibrate --compare-kwargs prune_mode=none  # pruning gain
    python benchmark.py fmvit_t --deploy --compare-arch mobileone_s1 --batch-sizes 1 8   # vs another architecture

Flags follow timm's benchmark.py (timm's names work, with timm's meanings). FLOPs are counted once per model on the reference kernels at batch 1
(fvcore counts multiply-adds; GFLOPs = 2 x GMACs); timing uses the selected kernels (--kernel-impl).
"""
import argparse
import csv
import json
import sys

import torch
from tqdm import tqdm

import backbones  # noqa: F401  (registers the zoo with timm)
import layers
from engine.profile import (
    count_flops, count_params, gemm_rate, resolve_model_names, sample_photos, time_model, time_ops,
)
from engine.cli import create_model_checked, run_cli
from engine.config import ParseKwargs, make_parser
from engine.deploy import deploy as deploy_model, keep_freed_memory, reparameterize, resolve_amp_dtype
from engine.hooks import calibrate_thresholds

_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__)
    parser.add_argument('models', nargs='*', help='model names or globs (quote globs)')
    parser.add_argument('-m', '--model', action='append', default=[], help='a model name or glob (repeatable)')
    parser.add_argument('--all', action='store_true', help='every model of the zoo')
    parser.add_argument('--ops', action='store_true', help='time the layers operators instead of models')
    parser.add_argument('--ops-filter', default='', help='only operator cases whose "op shape" contains this')
    parser.add_argument('--ops-max-cases', type=int, default=None)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('-b', '--batch-size', type=int, default=None, help='one batch size (as --batch-sizes B)')
    parser.add_argument('--img-size', type=int, default=None, help='square input side (default: the model\'s)')
    parser.add_argument('--mode', default='infer', choices=['infer', 'train'])
    parser.add_argument('--bench', default=None, choices=['inference', 'infer', 'train', 'both', 'profile'],
                        help="timm's name: 'inference'/'train' (as --mode), 'both' (each), 'profile' (params and "
                             "FLOPs only)")
    parser.add_argument('--iters', '--num-bench-iter', type=int, default=12, help='timed calls per measurement')
    parser.add_argument('--warmup', '--num-warm-iter', type=int, default=3, help='untimed calls first')
    parser.add_argument('--dtype', default='float32', choices=list(_DTYPES), help='autocast dtype for timing')
    parser.add_argument('--amp', action='store_true',
                        help='time under autocast with --amp-dtype where the device computes it natively (a CPU needs '
                             'AVX512-BF16 or AMX; elsewhere float32, with a warning); --dtype forces a dtype')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--kernel-impl', default='auto', choices=list(layers.GLOBAL_IMPLS))
    parser.add_argument('--compare-impl', action='store_true',
                        help='time every model with reference and with fast kernels, interleaved, and print the ratio')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='model args key=value')
    parser.add_argument('--compare-kwargs', nargs='*', default=None, action=ParseKwargs,
                        help='also time the model built with these args (e.g. prune_mode=none), interleaved, and '
                             'print the ratio')
    parser.add_argument('--compare-model', default='',
                        help='time this other registered model (e.g. timm\'s convit_tiny) holding the same weights, '
                             'interleaved, and print the ratio')
    parser.add_argument('--compare-arch', default='',
                        help='time this other architecture (any timm model, its own random weights) interleaved, and '
                             'print the ratio; with --deploy it is re-parameterized too')
    parser.add_argument('--deploy', '--reparam', action='store_true',
                        help='count and time the deployment form (engine.deploy.reparameterize: timm\'s '
                             'reparameterize_model, then every BatchNorm next to a conv/linear folded into it)')
    parser.add_argument('--compare-fused', action='store_true',
                        help='also time the deployment structure (engine.deploy.reparameterize: merged branches, '
                             'BatchNorms folded), interleaved')
    parser.add_argument('--compare-deploy', action='store_true',
                        help='also time the one-call deployment form (engine.deploy.deploy: merged branches, folded '
                             'BatchNorms, autocast in the native low precision if the device has one), interleaved')
    parser.add_argument('--compare-compile', action='store_true',
                        help='also time torch.compile(model) (inductor; compiled during the warm-up calls), interleaved')
    parser.add_argument('--real-images', action='store_true',
                        help='time on real photographs (scikit-learn sample images) instead of noise')
    parser.add_argument('--calibrate', action='store_true',
                        help='token-pruning models: set thresholds on the input batch (of the largest batch size) to '
                             'the paper\'s keep ratios before counting and timing')
    parser.add_argument('--no-flops', action='store_true')
    parser.add_argument('--no-timing', action='store_true')
    parser.add_argument('--num-threads', type=int, default=None)
    parser.add_argument('--json', default='', help='write results as JSON here')
    parser.add_argument('--csv', default='', help='write results as CSV here')
    parser.add_argument('--results-file', default='', help='write results here (timm\'s name)')
    parser.add_argument('--results-format', default=None, choices=['csv', 'json'],
                        help='default: json for a .json file name, else csv (as timm)')
    return parser


def _print_table(rows, columns):
    widths = [max(len(title), *(len(fmt(r)) for r in rows)) for title, fmt in columns]
    print('  '.join(title.rjust(w) for (title, _), w in zip(columns, widths)))
    for row in rows:
        print('  '.join(fmt(row).rjust(w) for (_, fmt), w in zip(columns, widths)))


def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def _benchmark_model(name, args, device):
    model_kwargs = dict(args.model_kwargs)
    model = create_model_checked(name, **model_kwargs).to(device)
    input_size = model.pretrained_cfg['input_size']
    if args.img_size:
        input_size = (input_size[0], args.img_size, args.img_size)
    cfg = model.pretrained_cfg
    photos = sample_photos(max(args.batch_sizes), input_size, cfg['mean'], cfg['std']) if args.real_images else None
    if args.calibrate:
        calibrate_thresholds(model, photos if photos is not None else torch.randn(max(args.batch_sizes), *input_size))
    # comparison copies load the (calibrated) training-form weights, then take the same deployment step as the model
    weights = model.state_dict()
    deploy = reparameterize if args.deploy else (lambda m: m)
    model = deploy(model)
    base = dict(model=name, params=count_params(model), input_size='x'.join(map(str, input_size)))
    # one bar per model: the FLOP count, then each (mode, batch size) measurement
    steps = [] if args.no_timing else [(mode, batch_size) for mode in args.modes for batch_size in args.batch_sizes]
    progress = tqdm(total=len(steps) + (not args.no_flops), desc=name, leave=False, dynamic_ncols=True)
    if not args.no_flops:
        progress.set_postfix_str('FLOPs')
        flops = count_flops(model, input_size, photos)
        base.update(gmacs=flops['macs'] / 1e9, gflops=flops['flops'] / 1e9)
        progress.update(1)
    rows = []
    if args.no_timing:
        progress.close()
        return [base]
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    timed = model
    if args.torchcompile:
        timed = torch.compile(model, backend=args.torchcompile)
    for mode, batch_size in steps:
        progress.set_postfix_str(f'{mode}, batch {batch_size}')
        inputs = photos[:batch_size] if photos is not None else None
        extra = {}
        if args.compare_impl:
            reference = create_model_checked(name, **dict(model_kwargs, kernel_impl='reference')).to(device)
            reference.load_state_dict(weights)
            extra['reference'] = deploy(reference)
            timed = create_model_checked(name, **dict(model_kwargs, kernel_impl='auto')).to(device)
            timed.load_state_dict(weights)
            timed = deploy(timed)
        if args.compare_model:
            rival = create_model_checked(args.compare_model).to(device)
            try:
                rival.load_state_dict(weights)
            except RuntimeError as e:
                raise ValueError(f'{args.compare_model} cannot hold the weights of {name}: {str(e).splitlines()[0]}')
            extra['rival'] = deploy(rival)
        if args.compare_arch:
            extra['arch'] = deploy(create_model_checked(args.compare_arch).to(device).eval())
        if args.compare_fused:
            extra['fused'] = reparameterize(model)
        if args.compare_deploy:
            extra['deployed'] = deploy_model(model, device)
        if args.compare_compile:
            extra['compiled'] = torch.compile(model)
        if args.compare_kwargs is not None:
            other = create_model_checked(name, **dict(model_kwargs, **dict(args.compare_kwargs))).to(device)
            other.load_state_dict(weights)
            extra['other'] = deploy(other)
        result = time_model(timed, batch_size, input_size, device, mode, _DTYPES[args.dtype],
                            args.channels_last, args.iters, args.warmup, extra, inputs)
        row = dict(base, batch_size=batch_size, mode=mode, dtype=args.dtype,
                   kernel_impl='auto' if args.compare_impl else args.kernel_impl, **result['model'])
        if args.compare_impl:
            ref = result['reference']
            row.update(ref_img_per_s=ref['img_per_s'], fast_vs_reference=row['img_per_s'] / ref['img_per_s'])
        if args.compare_model:
            row.update(rival=args.compare_model, rival_img_per_s=result['rival']['img_per_s'],
                       model_vs_rival=row['img_per_s'] / result['rival']['img_per_s'])
        if args.compare_arch:
            row.update(arch=args.compare_arch, arch_img_per_s=result['arch']['img_per_s'],
                       model_vs_arch=row['img_per_s'] / result['arch']['img_per_s'])
        if args.compare_fused:
            row.update(fused_img_per_s=result['fused']['img_per_s'],
                       fused_vs_unfused=result['fused']['img_per_s'] / row['img_per_s'])
        if args.compare_compile:
            row.update(compiled_img_per_s=result['compiled']['img_per_s'],
                       compiled_vs_eager=result['compiled']['img_per_s'] / row['img_per_s'])
        if args.compare_deploy:
            row.update(deployed_img_per_s=result['deployed']['img_per_s'],
                       deployed_vs_model=result['deployed']['img_per_s'] / row['img_per_s'])
        if args.compare_kwargs is not None:
            other = result['other']
            row.update(other_kwargs=' '.join(f'{k}={v}' for k, v in args.compare_kwargs.items()),
                       other_img_per_s=other['img_per_s'], model_vs_other=row['img_per_s'] / other['img_per_s'])
        if mode == 'infer' and 'gflops' in base and args.gemm_gflops:
            achieved = base['gflops'] * row['img_per_s']  # FLOPs of one image at the timed input size
            row.update(achieved_gflops_per_s=achieved, gemm_gflops_per_s=args.gemm_gflops,
                       efficiency_pct=100 * achieved / args.gemm_gflops)
        rows.append(row)
        progress.update(1)
    progress.close()
    return rows


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.models = list(args.models) + list(args.model)
    if args.batch_size is not None:
        args.batch_sizes = [args.batch_size]
    if args.amp:
        amp_dtype = resolve_amp_dtype(_DTYPES[args.amp_dtype], args.device)
        args.dtype = 'float32' if amp_dtype is None else args.amp_dtype
    keep_freed_memory()
    args.modes = [args.mode]
    if args.bench in ('inference', 'infer', 'train'):
        args.modes = ['train' if args.bench == 'train' else 'infer']
    elif args.bench == 'both':
        args.modes = ['infer', 'train']
    elif args.bench == 'profile':
        args.no_timing = True
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    layers.set_kernel_impl(args.kernel_impl)
    device = torch.device(args.device)
    if args.ops:
        rows = time_ops(args.batch_sizes[-1], args.iters, args.warmup, args.ops_filter, args.ops_max_cases,
                        progress=True)
        print(f'layers operators, batch {args.batch_sizes[-1]}, float32, {torch.get_num_threads()} threads, '
              f'min of {args.iters} interleaved calls; speedup = time of the first impl listed / impl time; '
              'peak MiB = most memory one call holds allocated at once (profiler), mem/first = its ratio to the first')
        _print_table(rows, [('op', lambda r: r['op']), ('shape', lambda r: r['shape']), ('impl', lambda r: r['impl']),
                            ('ms', lambda r: f'{r["ms"]:.2f}'), ('speedup', lambda r: f'{r["speedup"]:.2f}x'),
                            ('peak MiB', lambda r: f'{r["peak_mib"]:.1f}'),
                            ('mem/first', lambda r: _fmt(r['mem_ratio'], '.2f')),
                            ('max|diff|', lambda r: _fmt(r['max_abs_diff'], '.1e'))])
    else:
        if not args.models and not args.all:
            raise ValueError('name at least one model (or a glob), or use --all or --ops')
        names = resolve_model_names(args.models, args.all)
        # the efficiency ceiling, measured in this run at this thread count and dtype
        args.gemm_gflops = None if args.no_timing or args.no_flops or 'infer' not in args.modes \
            else gemm_rate(device, _DTYPES[args.dtype])
        rows = []
        for name in tqdm(names, desc='models', disable=len(names) < 2, leave=False, dynamic_ncols=True):
            rows += _benchmark_model(name, args, device)
        columns = [('model', lambda r: r['model']), ('params(M)', lambda r: f'{r["params"] / 1e6:.2f}'),
                   ('input', lambda r: r['input_size'])]
        if not args.no_flops:
            columns += [('GMACs', lambda r: f'{r["gmacs"]:.3f}'), ('GFLOPs', lambda r: f'{r["gflops"]:.3f}')]
        if not args.no_timing:
            columns += ([('mode', lambda r: r['mode'])] if len(args.modes) > 1 else [])
            columns += [('batch', lambda r: str(r['batch_size'])), ('ms/batch', lambda r: f'{r["latency_ms"]:.1f}'),
                        ('img/s', lambda r: f'{r["img_per_s"]:.1f}'),
                        ('peak MiB', lambda r: _fmt(r['peak_mem_mib'], '.0f'))]
            if args.gemm_gflops:
                columns += [('GFLOP/s', lambda r: _fmt(r.get('achieved_gflops_per_s'), '.1f')),
                            ('% GEMM', lambda r: _fmt(r.get('efficiency_pct'), '.0f'))]
            if args.compare_impl:
                columns += [('ref img/s', lambda r: f'{r["ref_img_per_s"]:.1f}'),
                            ('fast/ref', lambda r: f'{r["fast_vs_reference"]:.2f}x')]
            if args.compare_model:
                columns += [('rival', lambda r: r['rival']), ('rival img/s', lambda r: f'{r["rival_img_per_s"]:.1f}'),
                            ('ours/rival', lambda r: f'{r["model_vs_rival"]:.2f}x')]
            if args.compare_arch:
                columns += [('vs arch', lambda r: r['arch']), ('its img/s', lambda r: f'{r["arch_img_per_s"]:.1f}'),
                            ('ours/its', lambda r: f'{r["model_vs_arch"]:.2f}x')]
            if args.compare_fused:
                columns += [('fused img/s', lambda r: f'{r["fused_img_per_s"]:.1f}'),
                            ('fused/unfused', lambda r: f'{r["fused_vs_unfused"]:.2f}x')]
            if args.compare_compile:
                columns += [('compiled img/s', lambda r: f'{r["compiled_img_per_s"]:.1f}'),
                            ('compiled/eager', lambda r: f'{r["compiled_vs_eager"]:.2f}x')]
            if args.compare_deploy:
                columns += [('deployed img/s', lambda r: f'{r["deployed_img_per_s"]:.1f}'),
                            ('deployed/model', lambda r: f'{r["deployed_vs_model"]:.2f}x')]
            if args.compare_kwargs is not None:
                columns += [('vs', lambda r: r['other_kwargs']), ('its img/s', lambda r: f'{r["other_img_per_s"]:.1f}'),
                            ('ratio', lambda r: f'{r["model_vs_other"]:.2f}x')]
        print(f'{args.device}, {"+".join(args.modes)}, {args.dtype}, {torch.get_num_threads()} threads'
              + (', deployed (re-parameterized)' if args.deploy else '')
              + (', channels_last' if args.channels_last else '') + (', compiled' if args.torchcompile else '')
              + (f'; GEMM rate {args.gemm_gflops:.1f} GFLOP/s ({args.dtype} 2048x2048 matmul, this run): % GEMM = '
                 'FLOPs x img/s over it' if args.gemm_gflops else ''))
        _print_table(rows, columns)
    outputs = [(args.json, 'json'), (args.csv, 'csv')]
    if args.results_file:
        outputs.append((args.results_file, args.results_format or (
            'json' if args.results_file.lower().endswith('.json') else 'csv')))
    for path, results_format in outputs:
        if path and results_format == 'json':
            with open(path, 'w') as f:
                json.dump(rows, f, indent=2)
        elif path and rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with open(path, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
    return 0


if __name__ == '__main__':
    run_cli(main, 'benchmark.py')
