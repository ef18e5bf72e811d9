"""Fetching a data set's files from its mirror, md5-verified, without ever leaving a partial file.

Every file is streamed into a temporary file next to its destination and renamed into place only
once its checksum matches. A download that fails (offline, a bad checksum, a broken archive, an
interrupt) removes every file and folder it created, so that it leaves the disk as it found it;
what was there before is never removed. Every URL is opened through :func:`open_url`. ``MIRRORS`` holds the base URL of each data set; setting
``$RRAMC_DATASET_MIRROR`` replaces them all with ``$RRAMC_DATASET_MIRROR/<name>/`` (any URL
urllib opens, ``file://`` included), for machines behind a proxy cache or without internet.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rramc.errors import DatasetError

MIRROR_ENV = "RRAMC_DATASET_MIRROR"
MIRRORS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
# The md5 sums torchvision checks (torchvision/datasets/mnist.py and cifar.py).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
}
_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20


def mirror_url(name: str) -> str:
    """The base URL (ending in "/") the files of data set ``name`` are fetched from."""
    override = os.environ.get(MIRROR_ENV)
    base = f"{override.rstrip('/')}/{name}" if override else MIRRORS[name]
    return base.rstrip("/") + "/"


def open_url(url: str, timeout: float = _TIMEOUT_S) -> BinaryIO:
    """Open ``url`` for reading: the one place a download touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)


class _Created:
    """The files and folders one download created, so that a failed download can remove them again."""

    def __init__(self) -> None:
        self._paths: list[Path] = []  # in order of creation

    def mkdir(self, directory: Path) -> None:
        """``directory.mkdir(parents=True, exist_ok=True)``, remembering the folders it made."""
        missing = []
        for folder in (directory, *directory.parents):
            if os.path.lexists(folder):
                break
            missing.append(folder)
        self._paths.extend(reversed(missing))  # outermost first; recorded first, as mkdir may fail half-way
        directory.mkdir(parents=True, exist_ok=True)

    def replace(self, source: Path, target: Path) -> None:
        """``os.replace(source, target)``, remembering ``target`` if it did not exist before."""
        existed = os.path.lexists(target)
        os.replace(source, target)
        if not existed:
            self._paths.append(target)

    def remove(self) -> None:
        """Remove what was created, newest first; a folder only if it is empty (never another's files)."""
        for path in reversed(self._paths):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                pass  # e.g. someone else put a file into a folder we made; leave it be


def download(name: str, directory: str | Path) -> Path:
    """Fetch and verify every file of data set ``name`` into ``directory``; return ``directory``.

    Files already there with the right checksum are kept. CIFAR-10's archive is extracted into
    ``directory/cifar-10-batches-py`` and then removed. On failure every file and folder this call
    created is removed again (``directory`` and its parents included, when it created them) and a
    DatasetError says why the download failed and where to put the files by hand.
    """
    if name not in CHECKSUMS:
        raise DatasetError(
            f"{name}: there is nothing to download for this data set; downloadable ones: {', '.join(CHECKSUMS)}."
        )
    directory = Path(directory)
    created = _Created()
    try:
        try:
            created.mkdir(directory)
        except OSError as exc:
            raise DatasetError(
                f"{name}: the download failed: cannot create the download directory {directory} ({exc}). "
                f"{_manual_help(name, directory)}"
            ) from exc
        base = mirror_url(name)
        for filename, md5 in CHECKSUMS[name].items():
            target = directory / filename
            if not (target.is_file() and _md5_of(target) == md5):
                _fetch(name, base + filename, target, md5, created)
        if name == "cifar10":
            archive = directory / CIFAR_ARCHIVE
            _extract(archive, directory, created)
            # The archive only carries the batches; keeping it would double the disk use. (After a
            # failure it goes only if this call fetched it, with the rest of what the call created.)
            archive.unlink(missing_ok=True)
    except BaseException:  # KeyboardInterrupt too: an interrupted download leaves nothing behind either
        created.remove()
        raise
    return directory


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_help(name: str, directory: Path) -> str:
    """How to get the files of ``name`` into ``directory`` without this download."""
    online = f"from {MIRRORS[name]} on a machine that is online"
    if name == "cifar10":
        where = (
            f"To install the files by hand, download {CIFAR_ARCHIVE} {online} and extract it into {directory}, "
            f"so that {directory / 'cifar-10-batches-py'} holds data_batch_1..5 and test_batch"
        )
    else:
        where = f"To install the files by hand, download {', '.join(CHECKSUMS[name])} {online} and put them into {directory}"
    if name == "fashion-mnist":
        where += "; or run `apt-get install dataset-fashion-mnist`"
    return f"{where}; or set ${MIRROR_ENV} to a reachable mirror and retry."


def _reason(exc: BaseException) -> str:
    """What went wrong, without urllib's "<urlopen error ...>" wrapping."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _chunks(name: str, url: str, directory: Path) -> Iterator[bytes]:
    """The body of ``url``, with every network failure turned into a DatasetError."""
    try:
        with open_url(url, timeout=_TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK_BYTES):
                yield chunk
    except (OSError, http.client.HTTPException) as exc:  # URLError and socket timeouts are OSErrors
        raise DatasetError(
            f"{name}: the download failed: could not fetch {url} ({_reason(exc)}); this machine may be offline "
            f"or the mirror unreachable, and nothing was saved. {_manual_help(name, directory)}"
        ) from exc


def _fetch(name: str, url: str, target: Path, md5: str, created: _Created) -> None:
    cannot_write = f"{name}: the download failed: cannot write {target}; check the space and permissions there"
    try:
        handle, temporary_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise DatasetError(f"{cannot_write} ({exc}).") from exc
    temporary = Path(temporary_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(handle, "wb") as out:
            for chunk in _chunks(name, url, target.parent):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DatasetError(
                f"{name}: the download failed: {url} arrived with md5 {digest.hexdigest()}, expected {md5}; "
                f"it was corrupted or the mirror serves another file, so nothing was saved to {target}. Retry, "
                f"or set ${MIRROR_ENV} to a mirror of the original files."
            )
        created.replace(temporary, target)
    except OSError as exc:
        raise DatasetError(f"{cannot_write} ({exc}).") from exc
    finally:
        temporary.unlink(missing_ok=True)


def _inside(root: Path, member: tarfile.TarInfo, archive: Path) -> Path:
    """Where ``member`` extracts to under ``root``, refusing names that escape it."""
    destination = (root / member.name).resolve()
    if not destination.is_relative_to(root.resolve()) or destination == root.resolve():
        raise DatasetError(
            f"cifar10: {archive} holds the member {member.name!r}, which would land outside {root}; refusing "
            f"to extract it. This is not the official CIFAR-10 archive: delete it and download again."
        )
    return destination


def _extract(archive: Path, directory: Path, created: _Created) -> None:
    """Extract the regular files of ``archive`` into ``directory``, each renamed into place whole."""
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise DatasetError(
                        f"cifar10: {archive} holds {member.name!r}, which is a link or device, not a "
                        f"file; refusing to extract it. Delete the archive and download again."
                    )
                destination = _inside(staging, member, archive)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
        for staged in sorted(path for path in staging.rglob("*") if path.is_file()):
            final = directory / staged.relative_to(staging)
            created.mkdir(final.parent)
            created.replace(staged, final)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cifar10: {archive} is not a readable tar.gz archive ({exc}); download it again.") from exc
    except OSError as exc:
        raise DatasetError(f"cifar10: cannot extract {archive} into {directory} ({exc}).") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
