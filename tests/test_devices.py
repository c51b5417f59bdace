"""What the entry points set up first: the fast CPU path and tcmalloc, each on by default
where the system takes it, off when the user says so."""

import os
import subprocess
import sys

import pytest

from bt_jax.runtime import devices


def test_fast_cpu_flag_is_probed_and_respects_the_user():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    flags, message = devices.choose_cpu_flags(env, [])
    assert flags.endswith(devices.FAST_CPU_FLAG) and "--nofast_cpu" in message
    assert devices.choose_cpu_flags(env, ["--nofast_cpu"]) == (env["XLA_FLAGS"], None)
    assert devices.choose_cpu_flags({**env, "BT_JAX_FAST_CPU": "0"}, []) == (
        env["XLA_FLAGS"], None)
    mine = {**env, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}
    assert devices.choose_cpu_flags(mine, []) == (mine["XLA_FLAGS"], None)


def test_a_flag_xla_rejects_is_left_off(monkeypatch):
    monkeypatch.setattr(devices, "FAST_CPU_FLAG", "--xla_bt_jax_no_such_flag=1")
    env = {**os.environ, "XLA_FLAGS": ""}
    flags, message = devices.choose_cpu_flags(env, [])
    assert flags == "" and "rejected" in message


def _choose(env=None, argv=(), platform="linux", library="libtcmalloc_minimal.so.4"):
    return devices.choose_malloc(env or {}, list(argv), platform, find=lambda: library)


def test_tcmalloc_is_chosen_unless_the_user_or_the_system_says_otherwise():
    assert _choose() == ("libtcmalloc_minimal.so.4", None)
    assert _choose({"LD_PRELOAD": "libfoo.so"}) == ("libtcmalloc_minimal.so.4", None)
    for off in ({"BT_JAX_TCMALLOC": "0"}, {"LD_PRELOAD": "/x/libjemalloc.so.2"},
                {"BT_JAX_TCMALLOC_PRELOADED": "1"}):
        assert _choose(off) == (None, None), off
    assert _choose(argv=["--config", "c.py", "--notcmalloc"]) == (None, None)
    assert _choose(platform="darwin") == (None, None)  # no LD_PRELOAD there
    library, message = _choose(library=None)
    assert library is None and "libtcmalloc-minimal4" in message and "BT_JAX_TCMALLOC=0" in message


_SHOW = ("import sys; from bt_jax.runtime import devices; devices.preload_tcmalloc(); "
         "print('tcmalloc' in devices.loaded_libraries(), sys.argv[1:])")


def _show(**env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", "BT_JAX_TCMALLOC", "BT_JAX_TCMALLOC_PRELOADED")}
    done = subprocess.run([sys.executable, "-c", _SHOW, "--a", "b c"], capture_output=True,
                          text=True, env={**clean, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_the_process_is_re_executed_with_tcmalloc_and_keeps_its_arguments():
    if devices.find_tcmalloc() is None:
        pytest.skip("tcmalloc is not installed here (" + devices.MALLOC_INSTALL + "); "
                    ".ci/run installs it where apt-get can")
    out, err = _show()
    assert out == "True ['--a', 'b c']" and err.count("tcmalloc preloaded") == 1, (out, err)
    out, err = _show(BT_JAX_TCMALLOC="0")
    assert out == "False ['--a', 'b c']" and err == ""


_WARN_TWICE = """
import sys, warnings
from bt_jax.runtime import logs
if sys.argv[1:] == ["set-up"]:
    logs.quiet()  # what every entry point calls at start-up
warnings.warn_explicit("ours: 2 images skipped", UserWarning, logs.__file__, 1)
import theirs
theirs.warn()
"""
_THEIRS = """import warnings


def warn():
    warnings.warn("theirs: going away", FutureWarning, stacklevel=1)
"""


def test_entry_points_print_a_warning_on_one_line_without_its_source(tmp_path):
    (tmp_path / "theirs.py").write_text(_THEIRS)
    (tmp_path / "warn.py").write_text(_WARN_TWICE)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [repo, str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}

    def stderr(*args):
        done = subprocess.run([sys.executable, str(tmp_path / "warn.py"), *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr

    plain = stderr()  # Python's own format: each message, then its line of source
    assert '"""Quiet start-up logs' in plain and 'warnings.warn("theirs' in plain
    theirs = tmp_path / "theirs.py"
    assert stderr("set-up").splitlines() == [
        "UserWarning: ours: 2 images skipped",
        f"{theirs}:5: FutureWarning: theirs: going away"]
