"""Dataset readers and an in-memory batch loader (no torchvision needed).

- ``load_digits()``: the 8x8 UCI handwritten digits bundled with the package
  (``na_kernels/app/data/digits.csv.gz``, CC BY 4.0, see ``DIGITS_LICENSE.txt``).
- ``load_mnist10k()``: 10,000 28x28 MNIST digits bundled with the package
  (``na_kernels/app/data/mnist10k-*.gz``, CC BY-SA 3.0, see ``MNIST10K_LICENSE.txt``).
- ``load_mnist(data_dir, train)``: MNIST from its idx files (gzipped or not).
- ``load_cifar(data_dir, num_classes, train)``: CIFAR-10/100 python pickle batches.
- ``load_dataset(name, data_dir, train)``: one of the above by name.
- ``BatchLoader``: shuffles, shards across DDP ranks, moves uint8 batches to the
  device and normalizes / augments them there (random crop + flip).

Images are returned as uint8 tensors ``[N, C, H, W]`` and labels as int64 ``[N]``;
a missing or unreadable file raises :class:`DatasetError` naming the file expected.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .._validation import check_int

__all__ = [
    "DatasetError",
    "ImageData",
    "DATASETS",
    "load_digits",
    "digits_split",
    "load_mnist10k",
    "mnist10k_split",
    "read_idx",
    "load_mnist",
    "load_cifar",
    "load_dataset",
    "BatchLoader",
]


class DatasetError(RuntimeError):
    """A dataset file is missing or is not in the expected format."""


@dataclass
class ImageData:
    """uint8 images ``[N, C, H, W]``, int64 labels ``[N]`` and how to feed them to a net."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    max_value: float = 255.0
    crop_padding: int = 0  # random crop with this zero padding when augmenting (0: none)
    flip: bool = False  # random horizontal flip when augmenting
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> "ImageData":
        return ImageData(
            self.images[index],
            self.labels[index],
            self.num_classes,
            self.mean,
            self.std,
            self.max_value,
            self.crop_padding,
            self.flip,
            self.name,
        )


# ----------------------------------------------------------------------------------------
# Bundled 8x8 digits
# ----------------------------------------------------------------------------------------

_DIGITS_FILE = "digits.csv.gz"
# Mean/std of the pixel values (0..16) over all 1797 images.
_DIGITS_MEAN = (4.8842,)
_DIGITS_STD = (6.0168,)


def load_digits(path: Optional[str] = None) -> ImageData:
    """The 1797 8x8 handwritten digits shipped in ``na_kernels/app/data`` (pixel values 0..16)."""
    try:
        if path is None:
            raw = resources.files("na_kernels.app").joinpath("data", _DIGITS_FILE).read_bytes()
            where = f"na_kernels/app/data/{_DIGITS_FILE}"
        else:
            where = path
            with open(path, "rb") as f:
                raw = f.read()
        text = gzip.decompress(raw).decode("ascii")
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)
    except FileNotFoundError as e:
        raise DatasetError(f"bundled digits file not found: expected {where} (reinstall na_kernels)") from e
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"could not read the digits file {where}: {e}") from e
    if table.ndim != 2 or table.shape[1] != 65:
        raise DatasetError(f"{where}: expected 65 comma-separated columns, got shape {table.shape}")
    if table[:, :64].min() < 0 or table[:, :64].max() > 16 or not np.isin(table[:, 64], np.arange(10)).all():
        raise DatasetError(f"{where}: pixel values must be 0..16 and labels 0..9")
    images = torch.from_numpy(table[:, :64].astype(np.uint8)).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, 64].copy())
    return ImageData(
        images, labels, 10, _DIGITS_MEAN, _DIGITS_STD, max_value=1.0, crop_padding=1, flip=False, name="digits"
    )


def digits_split(data: Optional[ImageData] = None, test_fraction: float = 0.3) -> Tuple[ImageData, ImageData]:
    """A fixed, stratified held-out split of the digits (the same whatever seed a run uses).

    Per class, the images are shuffled by a generator with the constant seed 0 and the
    last ``test_fraction`` of them are held out: 1258 train / 539 test images.
    """
    return _stratified_split(load_digits() if data is None else data, test_fraction)


def _stratified_split(data: ImageData, test_fraction: float) -> Tuple[ImageData, ImageData]:
    """Per class, shuffle by a generator with the constant seed 0 and hold out the last
    ``round(test_fraction * n_class)`` images; both parts keep the original order."""
    g = torch.Generator().manual_seed(0)
    train_idx, test_idx = [], []
    for c in range(data.num_classes):
        idx = torch.nonzero(data.labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = int(round(idx.numel() * test_fraction))
        train_idx.append(idx[: idx.numel() - n_test])
        test_idx.append(idx[idx.numel() - n_test :])
    train_idx = torch.sort(torch.cat(train_idx)).values
    test_idx = torch.sort(torch.cat(test_idx)).values
    return data.subset(train_idx), data.subset(test_idx)


# ----------------------------------------------------------------------------------------
# Bundled 28x28 digits: 10,000 MNIST images
# ----------------------------------------------------------------------------------------

# file name -> SHA-256 of the bundled file (bench/demo_sweep_make_data.py writes them)
MNIST10K_FILES = {
    "mnist10k-images-idx3-ubyte.gz": "6147811c070e77823b67d8be7963f6ab00af77f5660c687bbdc8a3a1bc7b7459",
    "mnist10k-labels-idx1-ubyte.gz": "4098cd2f8985372bfe9d2755e944398058f46893cb54c15631c6343ae14199a9",
}
MNIST10K_SIZE = 10_000


def _bundled_idx(name: str, magic: int, what: str, folder: Optional[str]) -> np.ndarray:
    """One bundled idx file, its SHA-256 checked against ``MNIST10K_FILES`` first."""
    where = os.path.join(folder, name) if folder is not None else f"na_kernels/app/data/{name}"
    try:
        if folder is None:
            raw = resources.files("na_kernels.app").joinpath("data", name).read_bytes()
        else:
            with open(where, "rb") as f:
                raw = f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"bundled file not found: expected {where} (reinstall na_kernels)") from e
    except OSError as e:
        raise DatasetError(f"could not read {where}: {e}") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST10K_FILES[name]:
        raise DatasetError(
            f"{where}: SHA-256 {digest} is not the bundled file's {MNIST10K_FILES[name]} "
            "(damaged or replaced; reinstall na_kernels)"
        )
    return _parse_idx(raw, where, magic, what)


def load_mnist10k(folder: Optional[str] = None) -> ImageData:
    """10,000 28x28 MNIST digits shipped in ``na_kernels/app/data`` (uint8 ``[10000, 1, 28, 28]``,
    labels 0..9 in class order; ``folder``: read the same two files from elsewhere; their
    SHA-256 must match). Source and licence: ``na_kernels/app/data/MNIST10K_LICENSE.txt``."""
    names = list(MNIST10K_FILES)
    images = _bundled_idx(names[0], _MNIST_MAGIC["images"], "MNIST images: uint8, 3 dims", folder)
    labels = _bundled_idx(names[1], _MNIST_MAGIC["labels"], "MNIST labels: uint8, 1 dim", folder)
    if images.shape != (MNIST10K_SIZE, 28, 28) or labels.shape != (MNIST10K_SIZE,):  # the checksum makes this hold
        raise DatasetError(
            f"bundled MNIST files: expected [{MNIST10K_SIZE}, 28, 28] images and "
            f"{MNIST10K_SIZE} labels, got {images.shape} and {labels.shape}"
        )
    return ImageData(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        10,
        _MNIST_MEAN,
        _MNIST_STD,
        crop_padding=2,
        flip=False,
        name="mnist10k",
    )


def mnist10k_split(data: Optional[ImageData] = None, test_fraction: float = 0.2) -> Tuple[ImageData, ImageData]:
    """A fixed, stratified held-out split of the bundled MNIST digits, as ``digits_split``:
    8000 train / 2000 test images."""
    return _stratified_split(load_mnist10k() if data is None else data, test_fraction)


# ----------------------------------------------------------------------------------------
# MNIST (idx format)
# ----------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str, magic: Optional[int] = None, what: str = "") -> np.ndarray:
    """Read an idx file (``.gz`` or not): magic ``00 00 <dtype> <ndim>``, big-endian dims, data.

    ``magic``: the one magic number the file must have (e.g. ``0x00000803`` for MNIST images:
    uint8, 3 dims), with ``what`` naming the file's role in the error."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise DatasetError(f"file not found: {path}") from e
    except OSError as e:
        raise DatasetError(f"could not read {path}: {e}") from e
    return _parse_idx(raw, path, magic, what)


def _parse_idx(raw: bytes, path: str, magic: Optional[int] = None, what: str = "") -> np.ndarray:
    """``read_idx`` on the bytes of a file (``path`` names it in errors)."""
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DatasetError(f"could not read {path}: {e}") from e
    found = f"0x{raw[:4].hex():0>8}" if len(raw) >= 4 else f"{len(raw)} byte(s)"
    if magic is not None and (len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic):
        raise DatasetError(
            f"{path}: bad magic number {found}, expected 0x{magic:08x}"
            f"{' (' + what + ')' if what else ''}: not that idx file, or damaged; "
            "download it again"
        )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an idx file (bad magic number {found}, expected 0x0000<type><ndim> "
            f"with type one of {', '.join(f'{k:02x}' for k in _IDX_DTYPES)}); download it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated idx header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(dims)  # Python ints: a damaged header cannot overflow
    if len(raw) - header != count * dtype.itemsize:
        raise DatasetError(
            f"{path}: idx header says {dims} ({count * dtype.itemsize} bytes of data) "
            f"but the file holds {len(raw) - header} bytes (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


# idx magic numbers: 0x08 = uint8, then the number of dims
_MNIST_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)  # of MNIST's 60,000 training images
_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(data_dir: str, names: Sequence[str], what: str) -> str:
    for name in names:
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise DatasetError(
        f"{what}: expected {os.path.join(data_dir, names[0])} (or {', '.join(names[1:])}) but found none of them"
    )


def load_mnist(data_dir: str, train: bool = True) -> ImageData:
    """MNIST from ``data_dir`` (or ``data_dir/MNIST/raw``, torchvision's layout), idx files
    ``train-images-idx3-ubyte`` etc., each optionally ``.gz``. Images are zero-padded to 32x32."""
    candidates = [data_dir, os.path.join(data_dir, "MNIST", "raw"), os.path.join(data_dir, "raw")]
    base = next(
        (
            d
            for d in candidates
            if any(os.path.isfile(os.path.join(d, _MNIST_FILES[train][0] + s)) for s in ("", ".gz"))
        ),
        data_dir,
    )
    img_name, lbl_name = _MNIST_FILES[train]
    img_path = _find(base, [img_name, img_name + ".gz"], "MNIST images")
    lbl_path = _find(base, [lbl_name, lbl_name + ".gz"], "MNIST labels")
    images = read_idx(img_path, _MNIST_MAGIC["images"], "MNIST images: uint8, 3 dims")
    labels = read_idx(lbl_path, _MNIST_MAGIC["labels"], "MNIST labels: uint8, 1 dim")
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{img_path}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise DatasetError(f"{img_path} holds 0 images: the file is damaged or a placeholder; download it again")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{lbl_path}: expected {images.shape[0]} labels, got shape {labels.shape}")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{lbl_path}: labels must be 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))  # 28x28 -> 32x32, as LeNet did
    return ImageData(
        x,
        torch.from_numpy(labels.astype(np.int64)),
        10,
        _MNIST_MEAN,
        _MNIST_STD,
        crop_padding=2,
        flip=False,
        name="mnist",
    )


# ----------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)
# ----------------------------------------------------------------------------------------

_CIFAR = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except FileNotFoundError as e:
        raise DatasetError(f"file not found: {path}") from e
    except Exception as e:  # pickle raises many kinds on garbage
        raise DatasetError(f"{path} is not a readable CIFAR python pickle batch: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _integer_labels(labels, path: str, key: str) -> np.ndarray:
    """CIFAR labels as int64 [N]: a DatasetError unless they are integers (not floats, text or None)."""
    try:
        array = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: '{key}' is not a list of integer labels ({e})") from None
    if array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
        first = array.ravel()[0]
        example = first if array.dtype == object else first.item()
        raise DatasetError(
            f"{path}: '{key}' must hold integer class labels, got {array.dtype} values "
            f"(e.g. {example!r}): the file is damaged or not a CIFAR batch; download it again"
        )
    return array.astype(np.int64)


def load_cifar(data_dir: str, num_classes: int = 10, train: bool = True) -> ImageData:
    """CIFAR-10 (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) or CIFAR-100
    (``cifar-100-python/train``, ``test``) from ``data_dir`` or its subfolder of that name."""
    if num_classes not in _CIFAR:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    folder, train_files, test_files, key, mean, std = _CIFAR[num_classes]
    files = train_files if train else test_files
    base = os.path.join(data_dir, folder)
    if not os.path.isfile(os.path.join(base, files[0])) and os.path.isfile(os.path.join(data_dir, files[0])):
        base = data_dir
    xs, ys = [], []
    for name in files:
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            raise DatasetError(
                f"CIFAR-{num_classes}: expected {path} (the python version of the dataset, "
                f"folder {folder}/ from the .tar.gz) but it does not exist"
            )
        batch = _unpickle(path)
        if "data" not in batch or key.decode() not in batch:
            raise DatasetError(f"{path}: expected keys 'data' and '{key.decode()}', got {sorted(batch)}")
        data = np.asarray(batch["data"])
        labels = _integer_labels(batch[key.decode()], path, key.decode())
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
            raise DatasetError(
                f"{path}: expected uint8 data [N, 3072] and N labels, got {data.dtype} {data.shape} and {labels.shape}"
            )
        if data.shape[0] == 0:
            raise DatasetError(f"{path} holds 0 images: the file is damaged; download the dataset again")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DatasetError(f"{path}: labels must be 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    return ImageData(x, y, num_classes, mean, std, crop_padding=4, flip=True, name=f"cifar{num_classes}")


DATASETS = ("digits", "mnist10k", "mnist", "cifar10", "cifar100")


def load_dataset(name: str, data_dir: Optional[str] = None, train: bool = True) -> ImageData:
    """``digits`` or ``mnist10k`` (bundled; fixed split), ``mnist``, ``cifar10`` or ``cifar100`` (from ``data_dir``)."""
    name = name.lower()
    if name in ("digits", "mnist10k"):
        tr, te = digits_split() if name == "digits" else mnist10k_split()
        return tr if train else te
    if data_dir is None:
        raise DatasetError(f"dataset {name!r} needs --data-dir")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"data directory {data_dir} does not exist")
    if name == "mnist":
        return load_mnist(data_dir, train)
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_dir, int(name[5:]), train)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------


class BatchLoader:
    """Iterates ``(x, y)`` batches of an in-memory :class:`ImageData` on ``device``.

    - ``shuffle``: a new order every epoch, a pure function of ``(seed, epoch)`` — the same
      on every rank, so DDP ranks take disjoint shards (rank r takes every world-th sample;
      shards padded to equal length as DistributedSampler does). Without shuffle (evaluation)
      the shards are not padded: every sample is seen exactly once over all ranks.
    - ``augment``: random crop (zero padding ``data.crop_padding``) and horizontal flip
      (``data.flip``), drawn from a generator seeded by ``(seed, epoch, rank)``.
    - Pixels are scaled by ``1/max_value`` and normalized with the dataset's mean/std.
    Call ``set_epoch(e)`` before each epoch (as with DistributedSampler).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        device="cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        batch_size = check_int("batch_size", batch_size, minimum=1)
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.drop_last, self.device, self.seed = drop_last, torch.device(device), seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        # on a GPU the uint8 images live there (CIFAR: 150 MB): batches are gathered and
        # augmented on the device; the random indices and offsets still come from CPU generators
        self._images = data.images.to(self.device) if self.device.type == "cuda" else data.images
        self._labels = data.labels.to(self.device) if self.device.type == "cuda" else data.labels
        self._mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(data.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1 and not self.shuffle:  # evaluation: every sample exactly once
            idx = idx[self.rank :: self.world_size]
        elif self.world_size > 1:  # training: equal shards (as DistributedSampler)
            per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
            if idx.numel() < per_rank * self.world_size:  # pad by wrapping, as DistributedSampler
                idx = torch.cat([idx, idx[: per_rank * self.world_size - idx.numel()]])
            idx = idx[self.rank : per_rank * self.world_size : self.world_size]
        return idx

    def __len__(self) -> int:
        n = self._indices().numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank + 7)
        for b in range(len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            sel = sel.to(self._images.device)
            x = self._images[sel]
            y = self._labels[sel]
            if self.augment:
                x = self._augment(x, g)
            x = x.to(self.device, non_blocking=True).float()
            x = (x / self.data.max_value - self._mean) / self._std
            yield x, y.to(self.device, non_blocking=True)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        pad = self.data.crop_padding
        if pad > 0:
            xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
            dev = x.device
            oy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
            ox = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
            rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # [n, h]
            cols = ox[:, None] + torch.arange(w, device=dev)[None, :]  # [n, w]
            nidx = torch.arange(n, device=dev)[:, None, None]
            x = xp.permute(0, 2, 3, 1)[nidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.data.flip:
            f = (torch.rand(n, generator=g) < 0.5).to(x.device)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        return x.contiguous()
