"""Dataset readers on fixture files written in the real formats, and the batch loader."""

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from na_kernels.app.datasets import (
    BatchLoader,
    DatasetError,
    digits_split,
    load_cifar,
    load_dataset,
    load_digits,
    load_mnist,
    load_mnist10k,
    mnist10k_split,
    read_idx,
)

# ------------------------------------------------------------------------------- fixtures


def write_idx(path, array, gz=False):
    array = np.ascontiguousarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    if gz:
        raw = gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)


def make_mnist(folder, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, gz)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, gz)
        out[prefix] = (images, labels)
    return out


def make_cifar(folder, num_classes=10, n=6, seed=0):
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        sub, train_files, test_files, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            b"labels",
        )
    else:
        sub, train_files, test_files, key = "cifar-100-python", ["train"], ["test"], b"fine_labels"
    base = os.path.join(folder, sub)
    os.makedirs(base, exist_ok=True)
    written = {}
    for name in train_files + test_files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=(n,)).tolist()
        batch = {b"batch_label": name.encode(), b"data": data, key: labels, b"filenames": [b"x.png"] * n}
        if num_classes == 100:
            batch[b"coarse_labels"] = [0] * n
        with open(os.path.join(base, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return base, written


# ------------------------------------------------------------------------------- bundled MNIST (10,000)

MNIST10K_SHA256 = {  # of the files as shipped (bench/demo_sweep_make_data.py writes them)
    "mnist10k-images-idx3-ubyte.gz": "6147811c070e77823b67d8be7963f6ab00af77f5660c687bbdc8a3a1bc7b7459",
    "mnist10k-labels-idx1-ubyte.gz": "4098cd2f8985372bfe9d2755e944398058f46893cb54c15631c6343ae14199a9",
}


def test_bundled_mnist10k_files_and_contents():
    import hashlib
    from importlib import resources

    for name, digest in MNIST10K_SHA256.items():
        raw = resources.files("na_kernels.app").joinpath("data", name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest, name
    assert resources.files("na_kernels.app").joinpath("data", "MNIST10K_LICENSE.txt").is_file()
    d = load_mnist10k()
    assert d.images.shape == (10000, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.labels.shape == (10000,) and d.labels.dtype == torch.int64
    assert torch.bincount(d.labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert torch.equal(d.labels, d.labels.sort().values)  # class by class, as the npm package orders them
    assert int(d.images.min()) == 0 and int(d.images.max()) == 255
    assert int(d.images[0].sum()) == 31095 and int(d.images.sum()) == 262146600
    assert d.name == "mnist10k" and d.num_classes == 10 and d.in_channels == 1 and d.image_size == 28


def test_mnist10k_split_fixed_stratified_disjoint():
    tr, te = mnist10k_split()
    tr2, te2 = mnist10k_split()
    assert len(tr) == 8000 and len(te) == 2000
    assert torch.equal(te.images, te2.images) and torch.equal(tr.labels, tr2.labels)
    full = torch.bincount(load_mnist10k().labels)
    assert torch.equal(torch.bincount(te.labels), torch.round(full * 0.2).long())
    # disjoint: every image is either train or test (the 10,000 are distinct images)
    rows = {bytes(x.flatten().tolist()) for x in tr.images}
    assert len(rows) == 8000 and not any(bytes(x.flatten().tolist()) in rows for x in te.images)
    assert len(load_dataset("mnist10k", train=False)) == 2000 and len(load_dataset("mnist10k")) == 8000


def test_mnist10k_damaged_or_missing_file(tmp_path):
    from importlib import resources

    for name in MNIST10K_SHA256:
        (tmp_path / name).write_bytes(resources.files("na_kernels.app").joinpath("data", name).read_bytes())
    assert len(load_mnist10k(str(tmp_path))) == 10000  # the same files read from a folder
    images = tmp_path / "mnist10k-images-idx3-ubyte.gz"
    raw = bytearray(images.read_bytes())
    raw[-20] ^= 1
    images.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"mnist10k-images-idx3-ubyte.gz: SHA-256 .* reinstall"):
        load_mnist10k(str(tmp_path))
    raw[-20] ^= 1
    images.write_bytes(bytes(raw))
    (tmp_path / "mnist10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"not found: expected .*mnist10k-labels-idx1-ubyte.gz"):
        load_mnist10k(str(tmp_path))


# ------------------------------------------------------------------------------- digits


def test_bundled_digits():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8
    assert int(d.images.max()) == 16 and int(d.images.min()) == 0
    assert d.labels.shape == (1797,) and sorted(d.labels.unique().tolist()) == list(range(10))
    # the first image of the UCI file is a 0
    assert int(d.labels[0]) == 0
    assert d.images[0, 0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_digits_split_fixed_stratified_disjoint():
    tr, te = digits_split()
    tr2, te2 = digits_split()
    assert len(tr) == 1258 and len(te) == 539
    assert torch.equal(te.images, te2.images) and torch.equal(tr.labels, tr2.labels)
    counts = torch.bincount(te.labels, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56
    full = load_digits()
    rows = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(full.images, full.labels)}
    test_rows = [tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(te.images, te.labels)]
    assert all(r in rows for r in test_rows)
    # no test image index is also a training index (split by index; the file has a few duplicates)
    assert len(tr) + len(te) == len(full)


def test_corrupt_digits_file(tmp_path):
    p = tmp_path / "digits.csv.gz"
    p.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DatasetError, match="65 comma-separated columns"):
        load_digits(str(p))
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="could not read"):
        load_digits(str(p))


# ------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path, gz):
    truth = make_mnist(str(tmp_path), gz=gz)
    for train, key in ((True, "train"), (False, "t10k")):
        d = load_mnist(str(tmp_path), train=train)
        images, labels = truth[key]
        assert d.images.shape == (len(labels), 1, 32, 32)  # zero-padded to 32x32
        assert torch.equal(d.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
        assert int(d.images[:, :, :2].sum()) == 0
        assert d.labels.tolist() == labels.tolist()
    assert load_dataset("mnist", str(tmp_path), train=False).name == "mnist"


def test_mnist_torchvision_layout(tmp_path):
    make_mnist(str(tmp_path / "MNIST" / "raw"), gz=True)
    assert len(load_mnist(str(tmp_path), train=True)) == 12


def test_read_idx_int32(tmp_path):
    a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    write_idx(str(tmp_path / "a.idx"), a)
    assert np.array_equal(read_idx(str(tmp_path / "a.idx")), a)


def test_mnist_missing_file_names_it(tmp_path):
    make_mnist(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_mnist(str(tmp_path), train=False)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        load_mnist(str(tmp_path / "nowhere"), train=True)


def test_mnist_corrupt_files(tmp_path):
    make_mnist(str(tmp_path))
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])  # truncated
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_mnist(str(tmp_path))
    path.write_bytes(b"\x1f\x8b garbage that is not gzip")
    with pytest.raises(DatasetError, match="could not read"):
        load_mnist(str(tmp_path))
    path.write_bytes(b"PK\x03\x04" + raw[4:])  # wrong magic
    with pytest.raises(DatasetError, match="bad magic number 0x504b0304, expected 0x00000803"):
        load_mnist(str(tmp_path))
    with pytest.raises(DatasetError, match="not an idx file"):  # read_idx without an expected magic
        read_idx(str(path))
    write_idx(str(path), np.zeros((12, 28, 28), np.uint8))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros((11,), np.uint8))  # count mismatch
    with pytest.raises(DatasetError, match="expected 12 labels"):
        load_mnist(str(tmp_path))


# ------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_pickle_roundtrip(tmp_path, num_classes):
    _, written = make_cifar(str(tmp_path), num_classes)
    tr = load_cifar(str(tmp_path), num_classes, train=True)
    te = load_cifar(str(tmp_path), num_classes, train=False)
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    assert len(tr) == 6 * len(train_names) and len(te) == 6
    data, labels = written[train_names[0]]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    assert torch.equal(tr.images[0, 0], torch.from_numpy(data[0, :1024].reshape(32, 32)))
    assert torch.equal(tr.images[0, 2], torch.from_numpy(data[0, 2048:].reshape(32, 32)))
    assert tr.labels[:6].tolist() == labels
    assert tr.num_classes == num_classes and tr.flip and tr.crop_padding == 4
    # data_dir may also be the batches folder itself
    base = os.path.join(str(tmp_path), "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    assert len(load_dataset(f"cifar{num_classes}", base, train=False)) == 6


def test_cifar_missing_and_corrupt(tmp_path):
    base, _ = make_cifar(str(tmp_path), 10)
    os.remove(os.path.join(base, "data_batch_3"))
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar(str(tmp_path), 10, train=True)
    with open(os.path.join(base, "test_batch"), "wb") as f:
        f.write(b"\x00\x01 this is not a pickle")
    with pytest.raises(DatasetError, match="test_batch is not a readable CIFAR"):
        load_cifar(str(tmp_path), 10, train=False)
    with open(os.path.join(base, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetError, match=r"\[N, 3072\]"):
        load_cifar(str(tmp_path), 10, train=False)
    with pytest.raises(DatasetError, match="cifar-100-python"):
        load_cifar(str(tmp_path), 100, train=True)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs --data-dir"):
        load_dataset("cifar10", None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet", str(tmp_path))


# ------------------------------------------------------------------------------- loader


def test_loader_shards_are_disjoint_and_cover(tmp_path):
    _, te = digits_split()
    seen = []
    for rank in range(2):
        loader = BatchLoader(te, 50, rank=rank, world_size=2)  # evaluation: no padding
        seen.append(torch.cat([y for _, y in loader]))
    assert sum(s.numel() for s in seen) == len(te)
    # training: shuffled the same way on every rank, padded to equal shards, disjoint
    shards = [BatchLoader(te, 16, shuffle=True, rank=r, world_size=2, seed=3)._indices() for r in range(2)]
    assert shards[0].numel() == shards[1].numel() == 270
    assert len(set(shards[0].tolist()) & set(shards[1].tolist())) <= 1  # one index wraps around


def test_loader_augmentation_deterministic_and_normalized():
    tr, _ = digits_split()
    a = BatchLoader(tr, 64, shuffle=True, augment=True, seed=5)
    b = BatchLoader(tr, 64, shuffle=True, augment=True, seed=5)
    a.set_epoch(2), b.set_epoch(2)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (64, 1, 8, 8) and xa.dtype == torch.float32
    b.set_epoch(3)
    assert not torch.equal(next(iter(b))[1], ya)
    plain = BatchLoader(tr, len(tr))
    x, _ = next(iter(plain))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_random_crop_is_a_shifted_window():
    from na_kernels.app.datasets import ImageData

    img = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(8, 1, 1, 1)
    data = ImageData(img, torch.zeros(8, dtype=torch.long), 10, (0.0,), (1.0,), max_value=1.0, crop_padding=1)
    loader = BatchLoader(data, 8, augment=True, seed=1)
    x, _ = next(iter(loader))
    padded = torch.nn.functional.pad(img[0, 0].float(), (1, 1, 1, 1))
    windows = [padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
    for k in range(8):
        assert any(torch.equal(x[k, 0], w) for w in windows)


def test_mnist_bad_magic_names_file_and_expected_magic(tmp_path):
    make_mnist(str(tmp_path))
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b), labels.write_bytes(a)  # swapped: each a valid idx file, of the other kind
    with pytest.raises(
        DatasetError,
        match=r"train-images-idx3-ubyte: bad magic number 0x00000801, expected "
        r"0x00000803 \(MNIST images: uint8, 3 dims\)",
    ):
        load_mnist(str(tmp_path))
    images.write_bytes(a)
    with pytest.raises(
        DatasetError,
        match=r"train-labels-idx1-ubyte: bad magic number 0x00000803, expected "
        r"0x00000801 \(MNIST labels",
    ):
        load_mnist(str(tmp_path))
    labels.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="bad magic number 2 byte"):
        load_mnist(str(tmp_path))


def test_mnist_header_overflow_and_no_images(tmp_path):
    make_mnist(str(tmp_path))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**31) + bytes(10))
    with pytest.raises(DatasetError, match=rf"\({(2**32 - 1) ** 2 * 2**31} bytes of data\) but the file holds 10"):
        load_mnist(str(tmp_path))
    write_idx(str(path), np.zeros((0, 28, 28), np.uint8))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros((0,), np.uint8))
    with pytest.raises(DatasetError, match="holds 0 images"):
        load_mnist(str(tmp_path))
    write_idx(str(path), np.zeros((12, 14, 14), np.uint8))
    with pytest.raises(DatasetError, match=r"expected uint8 images \[N, 28, 28\]"):
        load_mnist(str(tmp_path))


@pytest.mark.parametrize(
    "labels,shown",
    [
        (["cat"] * 6, "<U3 values (e.g. 'cat')"),
        ([0.0] * 6, "float64"),
        ([None] * 6, "object values (e.g. None)"),
        ([True] * 6, "bool"),
    ],
)
def test_cifar_labels_must_be_integers(tmp_path, labels, shown):
    base, _ = make_cifar(str(tmp_path))
    with open(os.path.join(base, "data_batch_1"), "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"] = labels
    with open(os.path.join(base, "data_batch_1"), "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(
        DatasetError, match="data_batch_1: 'labels' must hold integer class labels, got " + re.escape(shown)
    ):
        load_cifar(str(tmp_path))


def test_cifar_without_images(tmp_path):
    base, _ = make_cifar(str(tmp_path))
    with open(os.path.join(base, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    with pytest.raises(DatasetError, match="test_batch holds 0 images"):
        load_cifar(str(tmp_path), train=False)
