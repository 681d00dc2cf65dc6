"""The scripts' machinery: everything train.py, eval.py and benchmark.py share that is not a model or an operator.

- `config`: YAML recipes checked against a script's argument parser (`-c/--config`).
- `cli`: model creation by name with clear errors, checkpoint loading, one-line errors for the user's mistakes.
- `data`: datasets (image folders, webdataset shards, the embedded digits set) and a corrupt-image-safe loader.
- `checkpoint`: atomic checkpoint writes, safe loading, RNG state capture, retention of the newest and best.
- `hooks`: the model-hook protocol (what a model returns in training, the optional methods the scripts call).
- `losses`: distillation (DeiT-style) plus the extra terms models hand out through the hooks.
- `loops`: one training epoch and one evaluation pass.
- `profile`: parameter and FLOP counts, latency and throughput, peak memory, the GEMM rate (benchmark.py).
- `deploy`: the deployment form (merged branches, folded BatchNorms, native low-precision autocast) and the
  allocator setting for CPU inference.
- `op_cases`: the `layers` operators' benchmark cases at backbone-stage shapes (`benchmark.py --ops`).
- `runs`: run folders <output>/<experiment> (args.yaml, summary.csv) and the check that a resume keeps the meaning.
- `plots`: training curves, and a prediction drawn with the model's inner decisions (eval.py --plot).
- `timm_flags`: the options of timm's scripts that ours do not implement, and why.
- `timm_run`: `python -m engine.timm_run <timm script> ...` runs one of timm's own scripts with our models.
"""
