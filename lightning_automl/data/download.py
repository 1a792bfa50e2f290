"""Raw dataset files in a local folder: checking they are there, and fetching them from mirrors.

Every download is written to a temporary file, checked against a known sha256 digest and only
then renamed into place, so an interrupted or tampered download never looks like a good file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["DownloadError", "download_file", "download_missing", "require_files", "sha256_of"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """No mirror delivered a file with the expected sha256 digest."""


def sha256_of(path: Path, *, gzipped: bool = False) -> str:
    """Hex sha256 of a file's bytes, or of its uncompressed content when ``gzipped``."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if gzipped else path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def require_files(data_dir: Path, filenames: Iterable[str], dataset: str) -> None:
    """Raise ``FileNotFoundError`` naming every file of ``filenames`` missing from ``data_dir``."""
    missing = [name for name in filenames if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} files not found in {data_dir.resolve()}: {', '.join(missing)}. "
            "Pass download=True to fetch them, or point data_dir at a folder that holds them."
        )


def download_missing(
    data_dir: Path, sha256: Mapping[str, str], mirrors: Sequence[str], *, gzipped: bool = False
) -> list[Path]:
    """Download each file of ``sha256`` (name -> digest) that ``data_dir`` lacks.

    Returns:
        The paths of the files downloaded (empty when all were already there).
    """
    return [
        download_file(name, data_dir, digest, mirrors, gzipped=gzipped)
        for name, digest in sha256.items()
        if not (data_dir / name).is_file()
    ]


def download_file(
    filename: str,
    data_dir: Path,
    sha256: str,
    mirrors: Sequence[str],
    *,
    gzipped: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download ``filename`` into ``data_dir`` from the first mirror that serves a valid copy.

    Args:
        filename: File name, appended to each mirror's base URL and kept in ``data_dir``.
        data_dir: Destination folder, created if needed.
        sha256: Expected hex digest; of the uncompressed content when ``gzipped``.
        mirrors: Base URLs (``https://``, ``file://``, ...), tried in order.
        gzipped: Whether the file is gzip-compressed and ``sha256`` is that of its content.
        timeout: Seconds to wait on each connection.

    Returns:
        The path of the downloaded file.

    Raises:
        DownloadError: Every mirror failed; the message lists each URL tried and why, including
            a checksum mismatch (a mismatching download is deleted, never kept).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    destination = data_dir / filename
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        log.info("Downloading %s", url)
        try:
            _fetch_verified(url, destination, sha256, gzipped=gzipped, timeout=timeout)
        except (OSError, EOFError, ValueError) as err:  # URLError and BadGzipFile are OSErrors
            log.warning("Download of %s failed: %s", url, err)
            failures.append(f"{url}: {err}")
        else:
            return destination
    tried = "\n  ".join(failures) if failures else "no mirror given"
    raise DownloadError(f"could not download {filename} into {data_dir.resolve()}:\n  {tried}")


def _fetch_verified(
    url: str, destination: Path, sha256: str, *, gzipped: bool, timeout: float
) -> None:
    handle, temp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as src:
            shutil.copyfileobj(src, out, _CHUNK)
        actual = sha256_of(temp, gzipped=gzipped)
        if actual != sha256:
            content = "uncompressed content of " if gzipped else ""
            raise ValueError(
                f"sha256 mismatch for {destination.name}: the {content}download has {actual}, "
                f"expected {sha256}; refused and deleted"
            )
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)
