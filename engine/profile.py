"""Measurement helpers for benchmark.py: parameters, FLOPs, latency/throughput, peak memory, operator timing."""
import contextlib
import difflib
import fnmatch
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import timm
import torch
from tqdm import tqdm

import layers
from layers.flops import flop_count

from .op_cases import benchmark_cases

__all__ = ['count_flops', 'count_params', 'measure_peak_memory', 'peak_allocated_mib', 'resolve_model_names',
           'sample_photos', 'time_interleaved', 'time_model', 'time_ops', 'zoo_models']


def zoo_models() -> List[str]:
    """Every model registered by the `backbones` package."""
    return sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('backbones.'))


def resolve_model_names(patterns: Sequence[str], use_all: bool = False) -> List[str]:
    """Expand names and globs against the registry; unknown ones raise a ValueError with close matches."""
    if use_all:
        return zoo_models()
    registry = timm.list_models()
    names = []
    for pattern in patterns:
        matches = sorted(fnmatch.filter(registry, pattern)) if any(c in pattern for c in '*?[') else (
            [pattern] if pattern.split('.')[0] in registry else [])
        if not matches:
            close = difflib.get_close_matches(pattern, registry, n=3)
            raise ValueError(f'Unknown model {pattern!r}' + (f'; did you mean {", ".join(close)}?' if close else ''))
        names += [m for m in matches if m not in names]
    return names


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, input_size, inputs: Optional[torch.Tensor] = None) -> Dict:
    """MACs of one image at `input_size` (C, H, W), counted in float32 eval mode on the kernels that count the
    intrinsic work (`kernel_impl('flops')`: the references, the linear-time form for linear attention).

    `inputs` (one image) replaces the random image, for models whose work depends on the input (token pruning).
    """
    model = model.eval()
    device = next(model.parameters()).device
    x = torch.randn(1, *input_size, device=device) if inputs is None else inputs[:1].to(device)
    with layers.kernel_impl('flops'), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # fvcore's tracer triggers torch.jit deprecation warnings
        macs, by_op, unsupported = flop_count(model, x)
    return dict(macs=macs, flops=2 * macs, by_op=by_op, unsupported=unsupported)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(functions: Dict[str, Callable[[], object]], iters: int, warmup: int, device: torch.device,
                     rounds: int = 3) -> Dict[str, List[float]]:
    """Per-call seconds of each function, measured in interleaved rounds so that machine noise hits all alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {name: [] for name in functions}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, fn in functions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return times


def measure_peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) that one call of `fn` holds allocated at once above what was allocated before it: the
    CUDA allocator's peak, or on CPU the peak of the profiler's allocation events (`peak_allocated_mib`), which
    sees every tensor the call allocates whatever the allocator caches (the process's resident set does not grow
    when freed memory is reused, so it reads 0 for many models)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    return peak_allocated_mib(fn)


def peak_allocated_mib(fn: Callable[[], object]) -> float:
    """Peak of the bytes that `fn` itself holds allocated at once on the CPU (MiB), from the profiler's allocation
    events (torch.profiler with profile_memory): exact and independent of the allocator's caching."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2 ** 20


def time_model(model: torch.nn.Module, batch_size: int, input_size, device: torch.device, mode: str = 'infer',
               dtype: torch.dtype = torch.float32, channels_last: bool = False, iters: int = 10, warmup: int = 2,
               extra: Optional[Dict[str, torch.nn.Module]] = None,
               inputs: Optional[torch.Tensor] = None) -> Dict[str, Dict]:
    """Latency and throughput of `model` (and of each model in `extra`, interleaved with it) at one batch size.

    mode 'infer' times a forward in inference mode; 'train' a forward and backward in train mode.
    `inputs` replaces the default random batch (e.g. real photos, for input-dependent models).
    bfloat16/float16 run under autocast. Returns name -> dict(latency_ms, img_per_s, peak_mem_mib).
    """
    models = {'model': model, **(extra or {})}
    x = torch.randn(batch_size, *input_size, device=device) if inputs is None else inputs.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def make_step(m):
        if mode == 'infer':
            m.eval()

            def step():
                with torch.inference_mode(), autocast:
                    return m(x)
        else:
            m.train()

            def step():
                with autocast:
                    out = m(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                out.float().mean().backward()
                m.zero_grad(set_to_none=True)
        return step

    steps = {name: make_step(m) for name, m in models.items()}
    times = time_interleaved(steps, iters, warmup, device)
    results = {}
    for name, step in steps.items():
        best = min(times[name])
        median = sorted(times[name])[len(times[name]) // 2]
        results[name] = dict(latency_ms=1000 * median, latency_min_ms=1000 * best, img_per_s=batch_size / median,
                             peak_mem_mib=measure_peak_memory(step, device))
    return results


def gemm_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, iters: int = 5) -> float:
    """This machine's dense matrix-multiply rate in GFLOP/s (best of `iters` square `size` products, the current
    thread count): the ceiling a model's achieved FLOP rate is compared with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = time_interleaved({'mm': lambda: a @ b}, iters, 1, device)['mm']
    return 2 * size ** 3 / min(times) / 1e9


def sample_photos(batch_size: int, input_size, mean, std) -> torch.Tensor:
    """A batch of real photographs (scikit-learn's two bundled sample images, 427x640), as a model sees them:
    resized to the input height and cut into overlapping crops across the width, normalized."""
    from sklearn.datasets import load_sample_images
    import torch.nn.functional as F
    _, h, w = input_size
    crops = []
    photos = [torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255) for img in load_sample_images().images]
    for i in range(batch_size):
        photo = photos[i % len(photos)]
        scale = h / photo.shape[1]
        photo = F.interpolate(photo[None], scale_factor=scale, mode='bilinear', align_corners=False)[0]
        steps = max(1, (batch_size + len(photos) - 1) // len(photos))
        left = int((photo.shape[2] - w) * ((i // len(photos)) / max(1, steps - 1) if steps > 1 else 0.5))
        crops.append(photo[:, :h, left:left + w])
    x = torch.stack(crops)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def time_ops(batch_size: int = 8, iters: int = 10, warmup: int = 2, name_filter: str = '',
             max_cases: Optional[int] = None, progress: bool = False) -> List[Dict]:
    """Time every operator case of `engine.op_cases` for each of its implementations, interleaved; ratios vs the first.

    Also the peak memory each implementation allocates during one call (`peak_allocated_mib`) and its ratio to the
    first's. Cases run without autograd unless the case itself enables it (the forward+backward cases).
    `progress` shows a progress bar over the cases.
    """
    rows = []
    cases = [c for c in benchmark_cases(batch_size) if name_filter in f'{c.op} {c.shape}']
    for case in tqdm(cases[:max_cases], desc='operators', disable=not progress, leave=False, dynamic_ncols=True):
        baseline = case.impls[0]
        with torch.no_grad():
            reference_out = case.run(baseline)
            functions = {impl: (lambda impl=impl: case.run(impl)) for impl in case.impls}
            times = time_interleaved(functions, iters, warmup, torch.device('cpu'))
            ref_time = min(times[baseline])
            peaks = {impl: peak_allocated_mib(functions[impl]) for impl in case.impls}
            for impl in case.impls:
                out = case.run(impl)
                diff = (out.float() - reference_out.float()).abs().max().item() \
                    if torch.is_tensor(out) and case.same_result else None
                rows.append(dict(op=case.op, shape=case.shape, impl=impl, ms=1000 * min(times[impl]),
                                 speedup=ref_time / min(times[impl]), max_abs_diff=diff, peak_mib=peaks[impl],
                                 mem_ratio=peaks[impl] / peaks[baseline] if peaks[baseline] else None))
    return rows
