"""Data: scikit-learn's digits (embedded), CIFAR-10/100 (the python pickle batches, read with pickle),
ImageNet (an ImageFolder tree, through torchvision). Nothing is downloaded.

Splits are fixed (independent of --seed): the validation images are held out of the training set by
a permutation drawn from a generator seeded with 0. The training order of an epoch comes from a
DistributedSampler seeded with (seed, epoch), and augmentation from a generator seeded with
(seed, epoch, rank), so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from granet_kernels.train.config import ConfigError, TrainConfig

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, rank...), the same on every platform."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1, 1 << 32], dtype=np.uint64)) & ((1 << 63) - 1))


@dataclass
class DataInfo:
    name: str
    num_classes: int
    input_shape: tuple  # per example (C, H, W)
    n_train: int
    n_val: int
    n_test: int


# --- in-memory tensors (digits, CIFAR) ------------------------------------------------------------

class TensorSplit:
    """Examples held in memory: x (uint8 images or float features), y (int64 labels)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)


class InMemoryLoader:
    """Batches of an in-memory split: order from a DistributedSampler (train) or in sequence (eval,
    sharded across ranks), then `prepare(x_batch, generator)` (to float, augment, normalise)."""

    def __init__(self, split: TensorSplit, batch_size: int, prepare, *, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.split, self.batch_size, self.prepare, self.train = split, batch_size, prepare, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        if train:
            self.sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=seed, drop_last=False)
            self.indices_count = len(self.sampler)
        else:
            self.sampler = None
            self.indices_count = len(range(rank, len(split), world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return math.ceil(self.indices_count / self.batch_size)

    def __iter__(self):
        if self.train:
            indices = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            gen = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, self.rank, 17))
        else:
            indices = torch.arange(self.rank, len(self.split), self.world_size)
            gen = None
        for start in range(0, len(indices), self.batch_size):
            idx = indices[start:start + self.batch_size]
            yield self.prepare(self.split.x[idx], gen if self.train else None), self.split.y[idx]


def _digits_prepare(mean: float, std: float):
    def prepare(x, gen):
        return (x - mean) / std
    return prepare


def _cifar_prepare(name: str, augment: bool):
    mean = torch.tensor(CIFAR_MEAN[name]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[name]).view(1, 3, 1, 1)

    def prepare(x, gen):
        x = x.float().div_(255)
        if gen is not None and augment:
            x = random_crop_flip(x, gen, pad=4)
        return (x - mean) / std
    return prepare


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image (the image's size) and a horizontal flip
    with probability 1/2, drawn from `gen`."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n, h
    cols = dx.view(n, 1) + torch.arange(w).view(1, w)  # n, w
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    return out.contiguous()


def _holdout(n: int, val_size: float | None, default: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (seed 0) split of range(n) into training and validation indices."""
    if val_size is None:
        n_val = min(default, n // 10)
    elif val_size < 1:
        n_val = int(round(n * val_size))
    else:
        n_val = int(val_size)
    if not 0 < n_val < n:
        raise ConfigError(f"--val-size {val_size:g} leaves no training or no validation images out of {n}; "
                          "pass a smaller count or a fraction < 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def load_digits_splits(val_size=None):
    """scikit-learn's digits (1797 8x8 images): fixed stratified split, 20% test, then 15% of all
    for validation (or --val-size of the rest), standardised with the training mean/std."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ConfigError("the digits data set needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    x = digits.images.astype(np.float32)  # 0..16
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    n_val = round(0.15 * len(y)) if val_size is None else (round(val_size * len(rest)) if val_size < 1 else int(val_size))
    classes = int(y.max()) + 1  # the split is stratified: every class on both sides
    if not classes <= n_val <= len(rest) - classes:
        raise ConfigError(f"--val-size {val_size:g} gives {n_val} validation digits out of {len(rest)}; the stratified "
                          f"split needs at least {classes} ({classes} classes) on each side")
    train, val = train_test_split(rest, test_size=n_val, random_state=0, stratify=y[rest])
    t = lambda ids: TensorSplit(torch.from_numpy(x[np.sort(ids)]).unsqueeze(1), torch.from_numpy(y[np.sort(ids)]))
    return t(train), t(val), t(test)


def _unpickle(path: str) -> dict:
    with open(path, "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


def _cifar_arrays(files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in files:
        d = _unpickle(path)
        if "data" not in d or label_key not in d:
            raise ConfigError(f"{path} is not a CIFAR python batch (no 'data' / '{label_key}' entry); "
                              "use the python version of the data set")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def cifar_files(name: str, data_dir: str) -> tuple[list[str], list[str], str]:
    if name == "cifar10":
        folder = os.path.join(data_dir, "cifar-10-batches-py")
        train = [os.path.join(folder, f"data_batch_{i}") for i in range(1, 6)]
        test = [os.path.join(folder, "test_batch")]
        want = "cifar-10-batches-py/data_batch_1..5 and test_batch (extract cifar-10-python.tar.gz there)"
    else:
        folder = os.path.join(data_dir, "cifar-100-python")
        train, test = [os.path.join(folder, "train")], [os.path.join(folder, "test")]
        want = "cifar-100-python/train and test (extract cifar-100-python.tar.gz there)"
    missing = [p for p in train + test if not os.path.isfile(p)]
    if missing:
        raise ConfigError(f"{name} not found: {missing[0]} is missing; put {want} under --data-dir "
                          f"(now {data_dir!r}; nothing is downloaded)")
    return train, test, folder


def imagenet_dirs(data_dir: str) -> tuple[str, str]:
    train, val = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
    for d in (train, val):
        if not os.path.isdir(d) or not any(os.path.isdir(os.path.join(d, c)) for c in os.listdir(d)):
            raise ConfigError(f"imagenet not found: {d} is missing or has no class folders; put the ImageFolder "
                              "tree train/<class>/*.JPEG and val/<class>/*.JPEG under --data-dir "
                              f"(now {data_dir!r}; nothing is downloaded)")
    return train, val


def check_data(cfg: TrainConfig) -> None:
    """The cheap checks (folders and files present, libraries installed), before anything is built."""
    if cfg.dataset in ("cifar10", "cifar100"):
        cifar_files(cfg.dataset, cfg.data_dir)
    elif cfg.dataset == "imagenet":
        imagenet_dirs(cfg.data_dir)
        _torchvision()
    else:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError("the digits data set needs scikit-learn (pip install scikit-learn)") from None


def _torchvision():
    try:
        import torchvision
        return torchvision
    except ImportError:
        raise ConfigError("ImageNet needs torchvision to read the JPEG folders (pip install torchvision)") from None


class Data:
    """Train / validation / test loaders of one data set for one process."""

    def __init__(self, info: DataInfo, train, val, test, sample_batch):
        self.info, self.train, self.val, self.test = info, train, val, test
        self._sample_batch = sample_batch

    def sample_batch(self, n: int):
        """A fixed training batch of n examples (prepared without augmentation), for step timing."""
        return self._sample_batch(n)


def build_data(cfg: TrainConfig, rank: int = 0, world_size: int = 1) -> Data:
    check_data(cfg)
    if cfg.batch_size % world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                          f"number of processes ({world_size})")
    per_rank = cfg.batch_size // world_size
    if cfg.dataset == "digits":
        train, val, test = load_digits_splits(cfg.val_size)
        mean, std = float(train.x.mean()), float(train.x.std())
        prep = _digits_prepare(mean, std)
        info = DataInfo("digits", 10, (1, 8, 8), len(train), len(val), len(test))
        return _in_memory(cfg, info, train, val, test, prep, prep, per_rank, rank, world_size)
    if cfg.dataset in ("cifar10", "cifar100"):
        train_files, test_files, _ = cifar_files(cfg.dataset, cfg.data_dir)
        key = "labels" if cfg.dataset == "cifar10" else "fine_labels"
        x, y = _cifar_arrays(train_files, key)
        xt, yt = _cifar_arrays(test_files, key)
        tr, va = _holdout(len(y), cfg.val_size, 5000)
        train, val, test = TensorSplit(x[tr], y[tr]), TensorSplit(x[va], y[va]), TensorSplit(xt, yt)
        classes = 10 if cfg.dataset == "cifar10" else 100
        if int(torch.cat([y, yt]).max()) >= classes or int(torch.cat([y, yt]).min()) < 0:
            raise ConfigError(f"{cfg.dataset} labels must be in 0..{classes - 1}; check the files under --data-dir")
        info = DataInfo(cfg.dataset, classes, (3, 32, 32), len(train), len(val), len(test))
        return _in_memory(cfg, info, train, val, test, _cifar_prepare(cfg.dataset, cfg.augment),
                          _cifar_prepare(cfg.dataset, False), per_rank, rank, world_size)
    return _imagenet(cfg, per_rank, rank, world_size)


def _in_memory(cfg, info, train, val, test, train_prep, eval_prep, per_rank, rank, world_size) -> Data:
    loaders = (InMemoryLoader(train, per_rank, train_prep, train=True, seed=cfg.seed, rank=rank, world_size=world_size),
               InMemoryLoader(val, cfg.eval_batch_size, eval_prep, train=False, rank=rank, world_size=world_size),
               InMemoryLoader(test, cfg.eval_batch_size, eval_prep, train=False, rank=rank, world_size=world_size))

    def sample(n):
        n = min(n, len(train))
        return eval_prep(train.x[:n], None), train.y[:n]
    return Data(info, *loaders, sample)


class _EpochLoader:
    """A DataLoader over a DistributedSampler whose order and worker seeds derive from (seed, epoch)."""

    def __init__(self, dataset, batch_size, num_workers, *, train, seed, rank, world_size):
        from torch.utils.data import DataLoader, Subset
        self.seed, self.rank, self.train, self.epoch = seed, rank, train, 0
        if train:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
            data = dataset
        else:
            self.sampler = None
            data = Subset(dataset, list(range(rank, len(dataset), world_size)))
        self.loader = DataLoader(data, batch_size=batch_size, sampler=self.sampler, shuffle=False,
                                 num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                 generator=torch.Generator())

    def set_epoch(self, epoch):
        self.epoch = epoch
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.loader.generator.manual_seed(derived_seed(self.seed, self.epoch, self.rank, 23))
        return iter(self.loader)


def _imagenet(cfg, per_rank, rank, world_size) -> Data:
    tv = _torchvision()
    from torchvision import transforms as T
    from torch.utils.data import Subset
    train_dir, val_dir = imagenet_dirs(cfg.data_dir)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if cfg.augment
                else T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    eval_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    full_train = tv.datasets.ImageFolder(train_dir, transform=train_tf)
    full_eval = tv.datasets.ImageFolder(train_dir, transform=eval_tf)
    test = tv.datasets.ImageFolder(val_dir, transform=eval_tf)
    if full_train.classes != test.classes:
        raise ConfigError(f"imagenet: {train_dir} and {val_dir} must hold the same class folders")
    tr, va = _holdout(len(full_train), cfg.val_size, 10000)
    train, val = Subset(full_train, tr.tolist()), Subset(full_eval, va.tolist())
    info = DataInfo("imagenet", len(full_train.classes), (3, 224, 224), len(train), len(val), len(test))
    kw = dict(seed=cfg.seed, rank=rank, world_size=world_size)
    loaders = (_EpochLoader(train, per_rank, cfg.num_workers, train=True, **kw),
               _EpochLoader(val, cfg.eval_batch_size, cfg.num_workers, train=False, **kw),
               _EpochLoader(test, cfg.eval_batch_size, cfg.num_workers, train=False, **kw))

    def sample(n):
        items = [full_eval[int(i)] for i in tr[:n]]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    return Data(info, *loaders, sample)
