"""bt_jax.benchmark.convs: the layer list read off a model, FLOP counts, the runners and
the per-step table. Timing itself is not tested."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bt_jax.network import embedding
from bt_jax.benchmark import convs
from bt_jax.benchmark.cases import Case

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_inception(size=80):
    config = Case(recipe="facenet", arch="tiny_inception", image_size=size,
                  projector="32-32").config()
    return embedding.create_model(config)


def test_every_convolution_of_the_network_is_listed_once_by_shape_with_its_count():
    model = _tiny_inception()
    layers = convs.network_convs(model, (80, 80, 3), 2)
    images = np.zeros((2, 80, 80, 3), np.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, images)["params"]
    kernels = [k for path, k in jax.tree_util.tree_leaves_with_path(params)
               if "backbone" in str(path[0]) and len(k.shape) == 4]
    assert sum(count for _, count, _ in layers) == len(kernels)
    name, count, first = layers[0]
    assert name == "backbone/Conv2d_1a_3x3/conv" and count == 1
    assert first == convs.Conv((2, 80, 80, 3), (3, 3), 2, (2, 2), ((0, 0), (0, 0)), True)
    assert not any(conv.first for _, _, conv in layers[1:])
    assert len({conv for _, _, conv in layers}) == len(layers)


def test_flops_count_the_forward_and_both_gradients_except_the_images():
    conv = convs.Conv((1, 5, 5, 2), (3, 3), 4, (1, 1), ((1, 1), (1, 1)), False)
    assert conv.flops == 2 * 5 * 5 * 9 * 2 * 4
    assert conv.step_flops == 3 * conv.flops
    assert conv._replace(first=True).step_flops == 2 * conv.flops
    strided = convs.Conv((1, 7, 7, 2), (3, 3), 4, (2, 2), ((0, 0), (0, 0)), False)
    assert strided.flops == 2 * 3 * 3 * 9 * 2 * 4


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 1), (2, 0))])
def test_every_runner_runs_a_convolution(pads):
    conv = convs.Conv((2, 9, 9, 32), (3, 3), 8, (2, 2), pads, False)
    for name, run in convs.make_runners(conv).items():
        assert run() > 0, name


def test_table_gives_per_step_times_subtotals_and_ratios():
    one = convs.Conv((1, 4, 4, 8), (1, 1), 8, (1, 1), ((0, 0), (0, 0)), False)
    three = convs.Conv((1, 4, 4, 8), (3, 3), 8, (1, 1), ((1, 1), (1, 1)), False)
    times = {"ours bf16": 0.001, "PyTorch bf16 autocast": 0.002}
    rows = [{"name": "a", "count": 3, **one._asdict(), "gflop": 1.0, "median_s": times},
            {"name": "b", "count": 1, **three._asdict(), "gflop": 2.0,
             "median_s": {"ours bf16": 0.004, "PyTorch bf16 autocast": 0.002}}]
    convs.per_step(rows)
    assert rows[0]["per_step_s"]["ours bf16"] == pytest.approx(0.006)  # x3 layers x2 views
    lines = convs.markdown(rows, list(times), "header").splitlines()
    assert lines[0] == "header"
    totals = {line.split("|")[1].strip(): line for line in lines if line.startswith("| **")}
    assert "| **6.0** | **12.0** | **0.50** |" in totals["**1x1 convolutions**"]
    assert "| **8.0** | **4.0** | **2.00** |" in totals["**larger windows**"]
    assert "| 10.00 | **14.0** | **16.0** | **0.88** |" in totals["**all convolutions**"]


@pytest.mark.slow
def test_script_writes_the_table_and_renders_it_again_from_its_json(tmp_path):
    out, saved, again = tmp_path / "convs.md", tmp_path / "convs.json", tmp_path / "again.md"
    env = {**os.environ, "BT_JAX_TCMALLOC": "0"}
    script = os.path.join(REPO, "scripts", "benchmark_convs.py")
    done = subprocess.run(
        [sys.executable, script, "--arch=tiny_inception", "--image_size=80", "--batch=2",
         "--rounds=1", "--runners=ours f32", f"--md={out}", f"--json={saved}"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "**all convolutions**" in text and "ours f32 / PyTorch f32" in text
    render = subprocess.run([sys.executable, script, f"--render={saved}", f"--md={again}"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert render.returncode == 0 and again.read_text() == text
    bad = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmark_convs.py"),
                          "--runners=ours f16"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "unknown ['ours f16']" in bad.stderr
