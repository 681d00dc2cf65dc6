"""Datasets and samplers for train.py / eval.py: image folders, webdataset shards, and the embedded digits set.

Exact resumption needs every random choice to be reproducible from (seed, epoch, position):
- the order of samples comes from `ResumableSampler`, a permutation seeded by (seed, epoch) that can start
  part-way through an epoch and splits indices across ranks (with optional repeated augmentation);
- per-sample augmentation draws from RNGs re-seeded per (seed, epoch, sample) by `SeededTransform`, so it
  does not depend on which worker loads the sample or on what ran before.
"""
import hashlib
import io
import math
import os
import random
import tarfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset, Sampler

__all__ = [
    'BadImageError', 'DigitsDataset', 'ImageFolderDataset', 'ResumableSampler', 'SeededTransform',
    'WebDatasetShards', 'collate_skip_bad', 'export_image_folder', 'export_webdataset', 'load_image', 'split_folder',
]

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')
# Folder names that are data set splits, never classes; the pairs are names timm treats as the same split.
SPLIT_NAMES = ('train', 'training', 'val', 'validation', 'valid', 'test', 'eval', 'evaluation')
_SPLIT_ALIASES = {'val': ('validation', 'valid'), 'validation': ('val', 'valid'), 'train': ('training',),
                  'test': ('eval',)}


def split_folder(root, split: str, required: bool = False) -> str:
    """The folder of `split` in a data set root, as timm finds it: `<root>/<split>` (or the split's other name,
    val <-> validation). If there is none, the root itself (a folder of classes), unless `required`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'Data folder {root} does not exist')
    for name in (split, *_SPLIT_ALIASES.get(split, ())):
        if (root / name).is_dir():
            return str(root / name)
    if required:
        raise FileNotFoundError(f'Data folder {root} has no {split!r} split (expected {root / split}/<class>/<image>)')
    return str(root)


class BadImageError(RuntimeError):
    """An image file that cannot be decoded; the message names the file."""


def load_image(source, name: Optional[str] = None) -> Image.Image:
    """Decode an image file (a path, or its bytes) as RGB; `BadImageError` names it when it is unreadable.

    Args:
        source: path of the image file, or its encoded bytes.
        name: what the error calls it (default: the path).
    """
    name = name or str(source)
    try:
        with (io.BytesIO(source) if isinstance(source, bytes) else open(source, 'rb')) as f:
            image = Image.open(f)
            image.load()
        return image.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadImageError(f'Cannot read image {name}: {e}') from e


def _sample_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') & 0x7FFF_FFFF_FFFF_FFFF


class SeededTransform:
    """Apply `transform` with python/numpy/torch RNGs seeded by (seed, epoch, sample id), then restore them."""

    def __init__(self, transform: Callable, seed: int):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __call__(self, image, sample_id) -> torch.Tensor:
        sample_seed = _sample_seed(self.seed, self.epoch, sample_id)
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(sample_seed)
        np.random.seed(sample_seed % (2 ** 32))
        torch.manual_seed(sample_seed)
        try:
            return self.transform(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


def _apply_transform(transform: Optional[Callable], image, sample_id):
    if isinstance(transform, SeededTransform):
        return transform(image, sample_id)
    return image if transform is None else transform(image)


class _IndexedImageDataset(Dataset):
    """Base: subclasses give `_load(index) -> (PIL image, label)`; transforms are applied with per-sample seeds."""

    def __init__(self, transform: Optional[Callable] = None, skip_bad: bool = False):
        self.transform = transform
        self.skip_bad = skip_bad

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.transform, SeededTransform):
            self.transform.epoch = epoch

    def __getitem__(self, index: int):
        try:
            image, label = self._load(index)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return _apply_transform(self.transform, image, index), label


class DigitsDataset(_IndexedImageDataset):
    """scikit-learn's 8x8 handwritten digits (1797 real scans, 10 classes), upscaled to RGB PIL images.

    Ships inside the scikit-learn wheel, so training and tests need no network. The split is fixed:
    a seeded permutation puts 80% in 'train' and 20% in 'val'.
    """

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, split: str = 'train', image_size: int = 64, transform: Optional[Callable] = None):
        super().__init__(transform)
        from sklearn.datasets import load_digits
        if split not in ('train', 'val'):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        order = np.random.RandomState(0).permutation(len(digits.images))
        n_train = int(0.8 * len(order))
        self.indices = order[:n_train] if split == 'train' else order[n_train:]
        self.images, self.targets = digits.images, digits.target
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int):
        i = self.indices[index]
        pixels = (self.images[i] * (255.0 / 16.0)).astype(np.uint8)  # digits are 0..16
        image = Image.fromarray(pixels, mode='L').resize((self.image_size, self.image_size), Image.BICUBIC)
        return image.convert('RGB'), int(self.targets[i])


class ImageFolderDataset(_IndexedImageDataset):
    """root/<class>/<image>: classes sorted by name, as torchvision's ImageFolder, with clear bad-image errors."""

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_bad: bool = False):
        super().__init__(transform, skip_bad)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f'Image folder {root} does not exist')
        self.class_names = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.class_names:
            raise ValueError(f'Image folder {root} has no class sub-folders (expected root/<class>/<image>)')
        splits = [name for name in self.class_names if name.lower() in SPLIT_NAMES]
        if splits:
            raise ValueError(f'Image folder {root} holds data set splits ({", ".join(splits)}), not classes: give '
                             f'the data set root with the split to read (eval.py ROOT --split val), or the split '
                             f'folder itself')
        self.samples = [
            (str(path), label)
            for label, name in enumerate(self.class_names)
            for path in sorted((root / name).rglob('*'))
            if path.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.samples:
            raise ValueError(f'Image folder {root} has no images with extensions {IMAGE_EXTENSIONS}')
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        path, label = self.samples[index]
        return load_image(path), label


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, split across ranks, that can start part-way through an epoch.

    Args:
        num_samples: dataset length.
        num_replicas, rank: distributed world size and this process's rank.
        shuffle: permute per epoch (seeded by seed + epoch) or keep dataset order.
        seed: base seed, identical on every rank.
        repeats: repeated augmentation (each index appears `repeats` times per epoch, spread over ranks, and the
            epoch is cut back to the dataset length), as in DeiT's RASampler.
        drop_last: drop the tail so every rank sees the same number of samples; else pad by wrapping around.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 repeats: int = 1, drop_last: bool = False):
        self.num_samples_total = num_samples
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.repeats, self.drop_last = shuffle, seed, max(1, repeats), drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.per_rank = num_samples // num_replicas
        else:
            self.per_rank = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip the first `start` samples of this rank (for resuming)."""
        self.epoch, self.start = epoch, start

    def _epoch_indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples_total, generator=g).tolist()
        else:
            order = list(range(self.num_samples_total))
        if self.repeats > 1:
            order = [i for i in order for _ in range(self.repeats)]
        total = self.per_rank * self.num_replicas
        if len(order) < total:
            order += order[:total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._epoch_indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


def collate_skip_bad(batch):
    """Default collation after dropping samples that failed to decode (returned as None by skip_bad datasets)."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return None, skipped
    return torch.utils.data.default_collate(kept), skipped


class WebDatasetShards(IterableDataset):
    """webdataset tar shards: `<key>.{png,jpg,jpeg,webp}` images with `<key>.cls` integer labels.

    Each epoch the shard list is permuted (seeded by seed + epoch), split by rank and then by DataLoader worker;
    samples pass a seeded shuffle buffer. Given (seed, epoch) and the worker count the stream is deterministic,
    so a resumed run skips the batches it already trained on and continues exactly.

    Args:
        urls: a brace pattern ('train-{000..099}.tar') or a list of local paths/URLs.
        transform: image transform (wrapped in SeededTransform for per-sample seeds).
        num_samples: samples per epoch across all ranks (webdataset cannot know it); per rank this is divided.
        rank, num_replicas: distributed split.
        shuffle_buffer: 0 disables sample shuffling (evaluation).
    """

    def __init__(self, urls, transform: Optional[Callable], num_samples: int, rank: int = 0, num_replicas: int = 1,
                 shuffle: bool = True, shuffle_buffer: int = 1000, seed: int = 0, skip_bad: bool = False):
        import braceexpand
        if isinstance(urls, str):
            urls = list(braceexpand.braceexpand(urls))
        self.urls = list(urls)
        missing = [u for u in self.urls if '://' not in u and not os.path.exists(u)]
        if missing:
            raise FileNotFoundError(f'webdataset shard(s) not found: {missing[:5]}')
        if len(self.urls) < num_replicas:
            raise ValueError(f'{len(self.urls)} shards cannot be split over {num_replicas} ranks')
        self.transform = transform
        self.num_samples = num_samples
        self.rank, self.num_replicas = rank, num_replicas
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, shuffle_buffer, seed
        self.skip_bad = skip_bad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.transform, SeededTransform):
            self.transform.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas

    def _decode(self, sample):
        key = sample['__key__']
        image_ext = next((e for e in ('png', 'jpg', 'jpeg', 'webp') if e in sample), None)
        if image_ext is None or 'cls' not in sample:
            raise BadImageError(f'webdataset sample {key} in {sample.get("__url__")} has no image or no .cls label')
        try:
            image = load_image(sample[image_ext], name=f'{key}.{image_ext} in {sample.get("__url__")}')
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        label = int(sample['cls'].decode() if isinstance(sample['cls'], bytes) else sample['cls'])
        return _apply_transform(self.transform, image, key), label

    def __iter__(self):
        import webdataset as wds
        urls = list(self.urls)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(urls)
        urls = urls[self.rank::self.num_replicas]
        stages = [wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples()]
        if self.shuffle and self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                                      rng=random.Random(_sample_seed(self.seed, self.epoch, self.rank))))
        pipeline = wds.DataPipeline(*stages)
        info = torch.utils.data.get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        # Each worker yields its share of this rank's epoch, so the epoch has a known length on every rank.
        per_rank = self.num_samples // self.num_replicas
        quota = per_rank // workers + (1 if worker_id < per_rank % workers else 0)
        for count, sample in enumerate(pipeline):
            if count >= quota:
                break
            yield self._decode(sample)


def export_image_folder(dataset: _IndexedImageDataset, root: str) -> str:
    """Write a dataset's raw images as root/<class>/<index>.png (for tests and demos)."""
    root = Path(root)
    for index in range(len(dataset)):
        image, label = dataset._load(index)
        class_dir = root / dataset.class_names[label]
        class_dir.mkdir(parents=True, exist_ok=True)
        image.save(class_dir / f'{index:05d}.png')
    return str(root)


def export_webdataset(dataset: _IndexedImageDataset, pattern: str, samples_per_shard: int = 256) -> List[str]:
    """Write a dataset's raw images to tar shards `pattern % shard` holding `<key>.png` and `<key>.cls`."""
    paths = []
    for shard, first in enumerate(range(0, len(dataset), samples_per_shard)):
        path = pattern % shard
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, 'w') as tar:
            for index in range(first, min(first + samples_per_shard, len(dataset))):
                image, label = dataset._load(index)
                buffer = io.BytesIO()
                image.save(buffer, format='PNG')
                for ext, payload in (('png', buffer.getvalue()), ('cls', str(label).encode())):
                    info = tarfile.TarInfo(f'{index:06d}.{ext}')
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths
