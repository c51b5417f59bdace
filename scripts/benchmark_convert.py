"""Time and peak memory of converting a full-size VGGFace2 pickle (targets: < 10 s, < 3x file).

  python scripts/benchmark_convert.py            # prints the numbers, updates docs/convert.md
  python scripts/benchmark_convert.py --doc=''   # prints only

A random file with the release's exact names, shapes and Python 2 pickle layout (fc
included, about 165 MB) is written to a temporary folder. Each measurement runs in a fresh
subprocess so that the memory baseline is clean:
* time and RSS: the peak resident set (VmHWM) minus the resident set just before the
  conversion starts, i.e. after Python, jax, orbax and bt_jax are imported;
* tracemalloc: the peak of memory allocated through Python's allocator (numpy arrays
  included) during the conversion, a second run since tracing slows it down.
"""

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOC = flags.DEFINE_string("doc", os.path.join(REPO, "docs", "convert.md"),
                           "Markdown file whose benchmark section is replaced; '' to skip.")
_CHILD = flags.DEFINE_string("child", None, "Internal: convert this file and print JSON.")
_TRACE = flags.DEFINE_bool("trace", False, "Internal: measure with tracemalloc.")
MARKERS = ("<!-- benchmark:start -->", "<!-- benchmark:end -->")
MB = 1e6


def proc_status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc.

    Not ru_maxrss: Linux carries that across fork and exec, so a child would report the
    parent's peak (the parent has just generated the 165 MB file).
    """
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read())[1]) * 1024


def measure(source: str, trace: bool) -> dict:
    """One conversion in this (fresh) process; the output folder is thrown away."""
    import orbax.checkpoint  # noqa: F401  (imported here so the baseline includes it)

    from bt_jax.weights import convert

    out = os.path.join(os.path.dirname(source), f"out-{os.getpid()}")
    before = proc_status_bytes("VmRSS")
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    conversion = convert.convert(source, keep_fc=False)
    converted = time.perf_counter()
    convert_peak = proc_status_bytes("VmHWM")
    convert.save(conversion, out)
    finished = time.perf_counter()
    result = {"read_convert_s": converted - start, "save_s": finished - converted,
              "total_s": finished - start}
    if trace:
        result["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    result["rss_before_bytes"] = before
    result["rss_convert_peak_bytes"] = convert_peak
    result["rss_peak_bytes"] = proc_status_bytes("VmHWM")
    return result


def run_child(source: str, trace: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={source}", f"--trace={trace}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_full_size_pickle(path: str) -> int:
    """Random weights with every name and shape of resnet50_ft_weight.pkl; returns bytes."""
    import numpy as np

    from bt_jax.weights.slots import expected_source_shapes
    from bt_jax.weights.sources import write_release_pickle

    rng = np.random.default_rng(0)
    state = {name: rng.standard_normal(shape, dtype=np.float32)
             for name, shape in expected_source_shapes("resnet50").items()}
    write_release_pickle(path, state)
    return os.path.getsize(path)


def report(size: int, timed: dict, traced: dict) -> str:
    delta = timed["rss_peak_bytes"] - timed["rss_before_bytes"]
    rows = [
        ("file size", f"{size / MB:.1f} MB"),
        ("conversion time (read, check, convert, sha256)", f"{timed['read_convert_s']:.2f} s"),
        ("orbax save", f"{timed['save_s']:.2f} s"),
        ("total time (target < 10 s)", f"{timed['total_s']:.2f} s"),
        ("RSS before conversion (Python + jax + orbax imported)",
         f"{timed['rss_before_bytes'] / MB:.0f} MB"),
        ("peak RSS increase (target < 3x file)",
         f"{delta / MB:.0f} MB = {delta / size:.2f}x file"),
        ("  of which reading + converting",
         f"{(timed['rss_convert_peak_bytes'] - timed['rss_before_bytes']) / MB:.0f} MB"),
        ("peak process RSS", f"{timed['rss_peak_bytes'] / MB:.0f} MB"),
        ("tracemalloc peak (Python + numpy allocations)",
         f"{traced['traced_peak_bytes'] / MB:.0f} MB = {traced['traced_peak_bytes'] / size:.2f}x"
         " file"),
    ]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs visible (shared), Python "
               f"{platform.python_version()}; file in the page cache (just written)")
    lines = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines + ["", f"Measured on {machine}."])


def update_doc(path: str, table: str) -> None:
    with open(path) as f:
        text = f.read()
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {MARKERS[0]} ... {MARKERS[1]} section to update; "
                         "add the two markers or pass --doc=''.")
    with open(path, "w") as f:
        f.write(text[:start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if _CHILD.value:
        print(json.dumps(measure(_CHILD.value, _TRACE.value)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "resnet50_ft_weight.pkl")
        size = write_full_size_pickle(source)
        timed, traced = run_child(source, trace=False), run_child(source, trace=True)
    table = report(size, timed, traced)
    print(table)
    if _DOC.value:
        update_doc(_DOC.value, table)
        print(f"updated {_DOC.value}")


if __name__ == "__main__":
    app.run(main)
