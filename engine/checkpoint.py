"""Training checkpoints: atomic writes, safe loading with clear errors, RNG state capture, retention."""
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ['CheckpointError', 'CheckpointManager', 'atomic_save', 'load_checkpoint_file', 'get_rng_state',
           'set_rng_state']


class CheckpointError(RuntimeError):
    """A file that is not a readable checkpoint; the message names it."""


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint_file(path) -> Dict:
    """Load a checkpoint with `weights_only=True` (no code execution), naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint {path} does not exist')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if detail.startswith('Weights only load failed'):
            detail = 'it is not a pickle of tensors (weights_only=True refuses anything else)'
        raise CheckpointError(
            f'{path} is not a readable PyTorch checkpoint (truncated, corrupt, or not a checkpoint file): {detail}'
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict or checkpoint dict')
    return obj


def get_rng_state() -> Dict:
    """Every RNG a training step draws from, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state['torch'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class CheckpointManager:
    """Keeps `last.pth.tar` (written every save, for resuming), the newest `keep_last` epoch checkpoints and
    `model_best.pth.tar` (by a metric, higher is better unless `decreasing`)."""

    def __init__(self, output_dir, keep_last: int = 3, decreasing: bool = False):
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.decreasing = decreasing
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None

    @property
    def last_path(self) -> Path:
        return self.output_dir / 'last.pth.tar'

    def save_last(self, state: Dict) -> None:
        state = dict(state, best_metric=self.best_metric, best_epoch=self.best_epoch)
        atomic_save(state, self.last_path)

    def save_epoch(self, state: Dict, epoch: int, metric: Optional[float]) -> None:
        """After an epoch: write its checkpoint, prune old ones, update best; then refresh last.pth.tar."""
        if metric is not None and (self.best_metric is None or (
                metric < self.best_metric if self.decreasing else metric > self.best_metric)):
            self.best_metric, self.best_epoch = metric, epoch
        state = dict(state, metric=metric, best_metric=self.best_metric, best_epoch=self.best_epoch)
        epoch_path = self.output_dir / f'checkpoint-{epoch}.pth.tar'
        atomic_save(state, epoch_path)
        if self.best_epoch == epoch:
            tmp = self.output_dir / '.model_best.pth.tar.tmp'
            shutil.copyfile(epoch_path, tmp)
            os.replace(tmp, self.output_dir / 'model_best.pth.tar')
        for old in self.epoch_checkpoints()[:-self.keep_last] if self.keep_last > 0 else []:
            old.unlink()
        atomic_save(state, self.last_path)

    def epoch_checkpoints(self) -> List[Path]:
        paths = self.output_dir.glob('checkpoint-*.pth.tar')
        return sorted(paths, key=lambda p: int(p.name.split('-')[1].split('.')[0]))

    def restore(self, state: Dict) -> None:
        self.best_metric, self.best_epoch = state.get('best_metric'), state.get('best_epoch')
