"""Builders for small dataset directories in the real on-disk formats (CIFAR-10, ImageNet folders).

The CIFAR-10 batches are written byte for byte the way the official files are: Python 2 pickles
(protocol 2, latin1 strings, numpy arrays under `numpy.core.multiarray._reconstruct`), hand-assembled
here because Python 3 cannot write Python 2 strings. So a reader that loads these loads the real
download too. Tests import this module as `datadirs` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_FOLDER = "cifar-10-batches-py"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _str(value: str | bytes) -> bytes:
    """A Python 2 str: SHORT_BINSTRING or BINSTRING (read back as latin1 text)."""
    raw = value.encode("latin1") if isinstance(value, str) else value
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _uint8_array(data: np.ndarray) -> bytes:
    """A 2-D uint8 array as numpy 1.x on Python 2 pickled it: _reconstruct, then __setstate__."""
    dtype = (b"cnumpy\ndtype\n" + _str("u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _str("|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")  # fmt: skip
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + _str("b")
            + b"\x87R" + b"(" + _int(1) + _int(data.shape[0]) + _int(data.shape[1]) + b"\x86" + dtype
            + b"\x89" + _str(np.ascontiguousarray(data).tobytes()) + b"tb")  # fmt: skip


def py2_pickle(items: dict[str, object]) -> bytes:
    """A Python 2 protocol-2 pickle of a dict of str -> (str | int list | str list | uint8 array)."""
    body = b""
    for key, value in items.items():
        if isinstance(value, np.ndarray):
            encoded = _uint8_array(value)
        elif isinstance(value, list):
            encoded = b"](" + b"".join(_int(v) if isinstance(v, int) else _str(v) for v in value) + b"e"
        elif isinstance(value, int):
            encoded = _int(value)
        else:
            encoded = _str(value)
        body += _str(key) + encoded
    return b"\x80\x02}(" + body + b"u."


def cifar_batches(per_batch: int = 20, test: int = 30, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Random batches: file name -> (uint8 N x 3072 rows, labels)."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out = {}
    for name in names:
        n = test if name == "test_batch" else per_batch
        out[name] = (rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)])
    return out


def write_cifar10(root: Path, *, per_batch: int = 20, test: int = 30, seed: int = 0,
                  style: str = "py2") -> dict[str, tuple[np.ndarray, list[int]]]:  # fmt: skip
    """Write root/cifar-10-batches-py in torchvision's layout; returns what each batch holds.

    Args:
        style: "py2" (the official files' encoding), or "py3" (bytes keys, protocol 5 numpy pickles,
            as someone re-exporting CIFAR-10 from Python 3 would write).
    """
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    batches = cifar_batches(per_batch, test, seed)
    for i, (name, (data, labels)) in enumerate(batches.items()):
        filenames = [f"img_{i}_{k}.png" for k in range(len(labels))]
        if style == "py2":
            blob = py2_pickle({"batch_label": f"{name} of 6", "labels": labels, "data": data, "filenames": filenames})
        else:
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                 b"filenames": [f.encode() for f in filenames]}, protocol=5)  # fmt: skip
        (folder / name).write_bytes(blob)
    meta = {"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return batches


def write_image_folder(
    folder: Path, tree: dict[str, list[tuple[int, int, str]]], seed: int = 0
) -> dict[Path, np.ndarray]:
    """PNG files folder/<class>/<k>.png of the given (width, height, PIL mode); returns their pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for cls, images in tree.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for k, (width, height, mode) in enumerate(images):
            shape = (height, width) if mode == "L" else (height, width, len(mode))
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            path = folder / cls / f"{k:02d}.png"
            Image.fromarray(array).save(path)  # mode follows the shape: L, RGB, RGBA
            pixels[path] = array
    return pixels
