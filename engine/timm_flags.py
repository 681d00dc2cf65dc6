"""The options of timm's train.py, validate.py and benchmark.py that our scripts do not implement, and why.

`-c` skips these keys of a timm `args.yaml` with one warning (engine.config.apply_config); the README's flag
table lists them. Every other timm option is accepted under timm's name, with timm's meaning.
"""
from typing import Dict, Iterable

__all__ = ['TIMM_UNSUPPORTED']


def _same(reason: str, names: Iterable[str]) -> Dict[str, str]:
    return {name: reason for name in names}


_DATASET_FACTORY = _same(
    "timm's dataset factory (torch/, tfds/, hfds/, wds/ readers); ours reads image folders, webdataset shards "
    "(--dataset wds) or the embedded digits set",
    ['dataset_download', 'class_map', 'input_img_mode', 'input_key', 'target_key', 'dataset_trust_remote_code'])
_RUNTIME = {
    **_same('TorchScript and the JIT fusers: not every family scripts; use --torchcompile',
            ['torchscript', 'fuser', 'aot_autograd']),
    **_same('torch.compile takes the backend only (--torchcompile BACKEND)', ['torchcompile_mode']),
    **_same("timm's own norm layers option; the families here use their own norm layers", ['fast_norm']),
    **_same('float32 weights with --amp autocast only', ['model_dtype']),
    **_same('model options go through --model-kwargs (e.g. global_pool=avg, in_chans=1)', ['gp', 'in_chans']),
    **_same('one device per process (torchrun)', ['num_gpu', 'device_modules', 'no_ddp_bb', 'synchronize_step']),
    **_same('torchrun passes the local rank in the environment', ['local_rank']),
    **_same('NaFlex (variable patch sequence) loading: no NaFlex model in the zoo',
            ['naflex_loader', 'naflex_train_seq_lens', 'naflex_max_seq_len', 'naflex_patch_sizes',
             'naflex_patch_size_probs', 'naflex_loss_scale', 'naflex_patchify_channels_first']),
    **_same("the loader has no prefetcher (timm's CUDA prefetcher)", ['no_prefetcher']),
}


def _runtime(*names: str) -> Dict[str, str]:
    return {name: _RUNTIME[name] for name in names}


_NAFLEX_TRAIN = [n for n in _RUNTIME if n.startswith('naflex_')]

TIMM_UNSUPPORTED: Dict[str, Dict[str, str]] = {
    'train.py': {
        **_DATASET_FACTORY,
        **_runtime('torchscript', 'fuser', 'torchcompile_mode', 'fast_norm', 'model_dtype', 'gp', 'in_chans',
                   'device_modules', 'no_ddp_bb', 'synchronize_step', 'local_rank', 'no_prefetcher', *_NAFLEX_TRAIN),
        'pretrained_path': 'use --initial-checkpoint FILE',
        'no_resume_opt': 'a resume restores the whole training state (exact resumption); start from weights '
                         'only with --initial-checkpoint',
        'head_init_scale': 'not implemented', 'head_init_bias': 'not implemented',
        'epoch_repeats': 'one pass over the data per epoch (resume positions count samples)',
        'start_epoch': 'a resume restores the epoch; a new run starts at 0',
        'patience_epochs': "the plateau schedule is not supported (the schedule steps without a metric)",
        **_same('not implemented; no recipe here uses them',
                ['no_aug', 'train_crop_mode', 'color_jitter_prob', 'grayscale_prob', 'gaussian_blur_prob']),
        'train_interpolation': "training resizes with --interpolation (default: the model's)",
        **_same('AugMix splits and the JSD loss are not implemented', ['aug_splits', 'jsd_loss', 'resplit']),
        **_same('the BCE loss is not implemented', ['bce_loss', 'bce_sum', 'bce_target_thresh', 'bce_pos_weight']),
        'drop_connect': 'deprecated in timm; use --drop-path',
        'drop_block': 'no family here has DropBlock',
        **_same('not implemented', ['bn_momentum', 'bn_eps', 'dist_bn', 'split_bn', 'model_ema_force_cpu']),
        'worker_seeding': 'augmentation is seeded per (seed, epoch, sample), independent of workers, for exact '
                          'resumption',
        'recovery_interval': 'use --checkpoint-interval N (atomic mid-epoch checkpoints every N updates)',
        **_same('loader internals with no equivalent here', ['save_images', 'use_multi_epochs_loader']),
        'tta': 'no test-time augmentation',
        **_same('the wandb run id is derived from the run folder', ['wandb_tags', 'wandb_resume_id']),
        **_same('variable-resolution / variable-batch training is not implemented (--max-steps-per-epoch caps an '
                'epoch)', ['train_img_sizes', 'train_batch_sizes', 'train_size_probs', 'train_size_schedule',
                           'train_size_schedule_spread', 'train_size_random_mix', 'train_batches_per_epoch',
                           'variable_batch_loss_scale']),
        **_same('feature distillation is not implemented (logit and token distillation are)',
                ['kd_student_feature_dim', 'kd_teacher_feature_dim']),
    },
    'validate.py': {
        **_DATASET_FACTORY,
        **_runtime('torchscript', 'fuser', 'aot_autograd', 'torchcompile_mode', 'fast_norm', 'model_dtype', 'gp',
                   'in_chans', 'num_gpu', 'no_prefetcher', 'naflex_loader', 'naflex_max_seq_len'),
        'use_train_size': 'use --img-size', 'crop_mode': 'center crop only',
        'crop_border_pixels': 'not implemented',
        'log_freq': 'a progress bar instead', 'test_pool': 'not implemented', 'pin_mem': 'not implemented',
        'tf_preprocessing': 'not implemented', 'real_labels': 'not implemented', 'valid_labels': 'not implemented',
        'retry': 'no batch-size decay on failure', 'seed': 'evaluation is deterministic',
        'metrics_avg': 'top-1/top-5 only',
    },
    'benchmark.py': {
        **_runtime('torchscript', 'fuser', 'aot_autograd', 'torchcompile_mode', 'fast_norm', 'gp'),
        'model_list': 'name models or globs on the command line, or --all',
        'detail': 'not implemented', 'no_retry': 'no batch-size decay on failure (there is no retry)',
        'use_train_size': 'use --img-size', 'input_size': 'use --img-size (3 channels)',
        'num_classes': 'benchmarks the model with its default head', 'grad_checkpointing': 'not implemented',
        'precision': 'use --amp/--amp-dtype (or --dtype)',
        **_same("--bench train times forward + backward without an optimizer step",
                ['opt', 'opt_eps', 'opt_betas', 'momentum', 'weight_decay', 'clip_grad', 'clip_mode', 'smoothing',
                 'drop', 'drop_path', 'drop_block']),
    },
}
