"""Fashion-MNIST loader: the Debian folder and the cache both come from the environment at call time."""
import pytest
import torch

from overhaul_det.datasets import fashion_mnist as fashion_mnist_module
from overhaul_det.datasets.fashion_mnist import debian_dir, default_root, load_fashion_mnist_arrays

RAW_IMAGES = "FashionMNIST/raw/train-images-idx3-ubyte"


def test_debian_files_are_unpacked_into_the_cache(fashion_files, tmp_path, monkeypatch):
    monkeypatch.setenv("OVERHAUL_DET_DEBIAN_DATA", str(fashion_files / "debian"))
    monkeypatch.setenv("OVERHAUL_DET_DATA", str(tmp_path))
    assert debian_dir() == fashion_files / "debian" and default_root() == tmp_path
    images, labels = load_fashion_mnist_arrays(train=True)
    assert (tmp_path / RAW_IMAGES).read_bytes() == (fashion_files / RAW_IMAGES).read_bytes()
    assert images.shape == (300, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert labels.bincount().tolist() == [30] * 10
    expected_images, expected_labels = load_fashion_mnist_arrays(train=True, root=fashion_files)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_a_second_unpacking_that_finishes_first_does_not_break_the_first(fashion_files, tmp_path, monkeypatch):
    """Two trainings started together on a new machine both unpack; the one that finishes first must
    not take the other's half-unpacked files from under it."""
    monkeypatch.setenv("OVERHAUL_DET_DEBIAN_DATA", str(fashion_files / "debian"))
    monkeypatch.setenv("OVERHAUL_DET_DATA", str(tmp_path))
    extract = fashion_mnist_module.extract_archive
    raced = []

    def extract_while_another_process_unpacks(source, target):
        if not raced:
            raced.append(source)
            assert fashion_mnist_module._unpack_debian(tmp_path)
        return extract(source, target)

    monkeypatch.setattr(fashion_mnist_module, "extract_archive", extract_while_another_process_unpacks)
    images, _ = load_fashion_mnist_arrays(train=True)
    assert raced and images.shape == (300, 28, 28)
    assert (tmp_path / RAW_IMAGES).read_bytes() == (fashion_files / RAW_IMAGES).read_bytes()
    assert sorted(p.name for p in (tmp_path / "FashionMNIST" / "raw").iterdir() if p.name.startswith(".")) == []


def test_empty_folders_fail_naming_both_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERHAUL_DET_DEBIAN_DATA", str(tmp_path / "debian"))
    monkeypatch.setenv("OVERHAUL_DET_DATA", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=r"not found under \S+/cache .*OVERHAUL_DET_DEBIAN_DATA.*OVERHAUL_DET_DATA"):
        load_fashion_mnist_arrays(train=False)
