from __future__ import annotations

import filecmp
import gzip
import hashlib
from pathlib import Path

import pytest
from shared_data import SHARED_DATA, requires_shared_data

from lightning_automl.data import DownloadError, MNISTDataModule, PTBDataModule
from lightning_automl.data.download import download_file, require_files, sha256_of

CONTENT = b"some dataset bytes\n" * 100
CONTENT_SHA256 = hashlib.sha256(CONTENT).hexdigest()


def mirror_url(folder: Path) -> str:
    return folder.as_uri() + "/"


def make_mirror(folder: Path, files: dict[str, bytes]) -> str:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return mirror_url(folder)


def test_sha256_of_plain_and_gzipped_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(CONTENT)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(CONTENT))
    assert sha256_of(tmp_path / "a.txt") == CONTENT_SHA256
    assert sha256_of(tmp_path / "a.txt.gz", gzipped=True) == CONTENT_SHA256
    assert sha256_of(tmp_path / "a.txt.gz") != CONTENT_SHA256


def test_download_file_from_a_file_mirror(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", {"a.txt": CONTENT})
    path = download_file("a.txt", tmp_path / "data" / "nested", CONTENT_SHA256, [mirror])
    assert path == tmp_path / "data" / "nested" / "a.txt"
    assert path.read_bytes() == CONTENT
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temporary file left


def test_download_file_checks_the_uncompressed_digest_of_gzipped_files(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", {"a.gz": gzip.compress(CONTENT)})
    path = download_file("a.gz", tmp_path / "data", CONTENT_SHA256, [mirror], gzipped=True)
    assert gzip.decompress(path.read_bytes()) == CONTENT


def test_download_file_refuses_a_checksum_mismatch(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", {"a.txt": b"tampered"})
    with pytest.raises(DownloadError) as error:
        download_file("a.txt", tmp_path / "data", CONTENT_SHA256, [mirror])
    message = str(error.value)
    assert "sha256 mismatch for a.txt" in message
    assert CONTENT_SHA256 in message and hashlib.sha256(b"tampered").hexdigest() in message
    assert list((tmp_path / "data").iterdir()) == []


def test_download_file_falls_back_to_the_next_mirror(tmp_path):
    missing = mirror_url(tmp_path / "nowhere")
    bad = make_mirror(tmp_path / "bad", {"a.txt": b"tampered"})
    good = make_mirror(tmp_path / "good", {"a.txt": CONTENT})
    path = download_file("a.txt", tmp_path / "data", CONTENT_SHA256, [missing, bad, good])
    assert path.read_bytes() == CONTENT


def test_download_file_lists_every_failed_url(tmp_path):
    first, second = mirror_url(tmp_path / "one"), mirror_url(tmp_path / "two")
    with pytest.raises(DownloadError) as error:
        download_file("a.txt", tmp_path / "data", CONTENT_SHA256, [first, second])
    message = str(error.value)
    assert f"{first}a.txt: " in message and f"{second}a.txt: " in message
    assert str((tmp_path / "data").resolve()) in message


def test_require_files_names_every_missing_file(tmp_path):
    (tmp_path / "present.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as error:
        require_files(tmp_path, ["present.txt", "one.txt", "two.txt"], "Some dataset")
    message = str(error.value)
    assert "one.txt" in message and "two.txt" in message and "present.txt" not in message
    assert str(tmp_path.resolve()) in message and "download=True" in message


@pytest.fixture
def mnist_mirror(tmp_path) -> Path:
    """A local mirror that links to the shared MNIST files."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNISTDataModule.SHA256:
        (mirror / name).symlink_to(SHARED_DATA / "mnist" / name)
    return mirror


@requires_shared_data("mnist")
def test_mnist_downloads_every_missing_file(tmp_path, mnist_mirror):
    datamodule = MNISTDataModule(data_dir=str(tmp_path / "mnist"), download=True)
    datamodule.MIRRORS = (mirror_url(mnist_mirror),)
    datamodule.prepare_data()
    for name in MNISTDataModule.SHA256:
        assert filecmp.cmp(tmp_path / "mnist" / name, SHARED_DATA / "mnist" / name, shallow=False)


@requires_shared_data("mnist")
def test_mnist_refuses_a_tampered_file(tmp_path, mnist_mirror, monkeypatch):
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (data_dir / name).symlink_to(SHARED_DATA / "mnist" / name)
    tampered = "t10k-labels-idx1-ubyte.gz"
    (mnist_mirror / tampered).unlink()
    (mnist_mirror / tampered).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(12)))
    monkeypatch.setattr(MNISTDataModule, "MIRRORS", (mirror_url(mnist_mirror),))
    with pytest.raises(DownloadError, match=f"sha256 mismatch for {tampered}") as error:
        MNISTDataModule(data_dir=str(data_dir), download=True).prepare_data()
    assert MNISTDataModule.SHA256[tampered] in str(error.value)
    assert not (data_dir / tampered).exists()


@requires_shared_data("mnist")
def test_mnist_falls_back_to_the_second_mirror(tmp_path, mnist_mirror):
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (data_dir / name).symlink_to(SHARED_DATA / "mnist" / name)
    datamodule = MNISTDataModule(data_dir=str(data_dir), download=True)
    datamodule.MIRRORS = (mirror_url(tmp_path / "offline"), mirror_url(mnist_mirror))
    datamodule.prepare_data()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(MNISTDataModule.SHA256)


def test_no_download_without_the_flag(tmp_path):
    datamodule = MNISTDataModule(data_dir=str(tmp_path / "mnist"))
    datamodule.MIRRORS = (mirror_url(tmp_path / "offline"),)
    datamodule.prepare_data()
    assert not (tmp_path / "mnist").exists()


@requires_shared_data("ptb")
def test_ptb_downloads_and_checks_the_standard_copy(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in PTBDataModule.SHA256:
        (mirror / name).symlink_to(SHARED_DATA / "ptb" / name)
    datamodule = PTBDataModule(data_dir=str(tmp_path / "ptb"), download=True)
    datamodule.MIRRORS = (mirror_url(mirror),)
    datamodule.prepare_data()
    for name in PTBDataModule.SHA256:
        assert filecmp.cmp(tmp_path / "ptb" / name, SHARED_DATA / "ptb" / name, shallow=False)
