"""One writer at a time (issue 29): the workdir and gallery locks, with real processes.

A helper process takes the lock and holds it while ``train.py`` or ``identify.py enrol
--add`` starts: the second process must exit at once, naming the holder, and change
nothing. A lock left by a dead process on this host is taken over; one written on another
host is left alone.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bt_jax.runtime.lock import FileLock, LockedError
from conftest import free_port, tiny_flags

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from bt_jax.runtime.lock import FileLock; "
        "lock = FileLock(sys.argv[1], 'test').acquire(); print('held', flush=True); "
        "sys.stdin.read(); lock.release()")


class Holder:
    """A real process that holds the lock at ``path`` until ``release()``."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self):
        self.proc.communicate("", timeout=30)
        assert self.proc.returncode == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.release()


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "lock"
    with Holder(path) as holder:
        with pytest.raises(LockedError, match=f"in use by pid {holder.proc.pid} on host "
                                              f"{socket.gethostname()} since"):
            FileLock(str(path), "the thing").acquire()
    with FileLock(str(path), "the thing"):  # free again once the holder is gone
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()  # removed on release


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
    path = tmp_path / "lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    path.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(),
                                "since": "yesterday"}))
    with pytest.warns(UserWarning, match=f"took over the lock .* left by pid {dead}"):
        lock = FileLock(str(path), "the run").acquire()
    lock.release()


def test_a_lock_from_another_host_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "lock"
    text = json.dumps({"pid": 4242, "host": "elsewhere.example", "since": "noon"})
    path.write_text(text)
    with pytest.raises(LockedError, match="pid 4242 on host elsewhere.example since noon.*"
                                          "another host"):
        FileLock(str(path), "the run").acquire()
    assert path.read_text() == text


def test_train_is_refused_while_another_process_holds_the_workdir(tmp_path):
    """Two processes of one jax.distributed run (4 CPU devices each): process 0 is refused
    the lock, and process 1 stops with it instead of waiting for it at a collective."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    port, env = free_port(), dict(os.environ,
                                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
    command = [sys.executable, "scripts/train.py", "--config", "configs/synthetic.py",
               f"--workdir={workdir}", *tiny_flags(),
               f"--config.distributed.coordinator_address=127.0.0.1:{port}",
               "--config.distributed.num_processes=2"]
    with Holder(workdir / "lock") as holder:
        procs = [subprocess.Popen(command + [f"--config.distributed.process_id={i}"], cwd=REPO,
                                  env=env, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        try:
            errors = [p.communicate(timeout=300)[1] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert [p.returncode for p in procs] == [1, 1], errors[0][-2000:] + errors[1][-2000:]
        assert f"--workdir {workdir} is in use by pid {holder.proc.pid}" in errors[0]
        assert "process 0 could not take the run's lock" in errors[1]
        assert "Traceback" not in errors[0] + errors[1]
    assert sorted(os.listdir(workdir)) == []  # no config.json, data or checkpoint written


def test_enrol_add_is_refused_while_another_process_holds_the_gallery(tmp_path):
    gallery = tmp_path / "g.npz"
    gallery.write_bytes(b"the first writer's gallery")
    (tmp_path / "people" / "ann").mkdir(parents=True)
    with Holder(f"{gallery}.lock") as holder:
        done = subprocess.run([sys.executable, "scripts/identify.py", "enrol", "--config",
                               "configs/synthetic.py", *tiny_flags(), "--init", "scratch",
                               "--images", str(tmp_path / "people"), "--out", str(gallery),
                               "--add"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"the gallery {gallery} is in use by pid {holder.proc.pid}" in done.stderr
    assert gallery.read_bytes() == b"the first writer's gallery"
