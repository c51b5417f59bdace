"""The benchmark's own logic: the fused-views step, the PyTorch mirror, the comm model,
the config stand-in and the report. Timing itself is not tested."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bt_jax.benchmark import comm, jobs, measure, plan, report
from bt_jax.benchmark.cases import Case, full_pool_window
from bt_jax.benchmark.jax_step import JaxStep, Variant
from bt_jax.runtime.devices import FAST_CPU_FLAG

TINY = Case(image_size=32, batch=8, projector="32-32", arch="tiny", num_devices=2)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_fused_views_step_equals_train_step():
    plain = JaxStep(TINY, Variant())
    fused = JaxStep(TINY, Variant(fused=True), host_state=plain.host_state)
    for _ in range(2):
        plain(), fused()
    assert fused.loss == pytest.approx(plain.loss, rel=1e-5)
    for a, b in zip(_leaves(plain.state.params), _leaves(fused.state.params)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    # Running stats: the vmapped views must reproduce the sequential EMA of train_step.
    for a, b in zip(_leaves(plain.state.batch_stats), _leaves(fused.state.batch_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_rotation_varies_order_and_neighbours():
    names = ["a", "b", "c"]
    orders = [measure.rotation(names, r) for r in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["a", "c", "b"], ["c", "a", "b"]]
    # Over a few rounds every runner directly follows every other one: a slow patch on a
    # shared machine is not pinned on one runner's predecessor.
    follows = {(o[i], o[i + 1]) for o in orders for i in range(2)}
    assert follows == {(x, y) for x in names for y in names if x != y}


def test_alternate_limits_slow_runner():
    calls = {"fast": 0, "slow": 0}

    def runner(name):
        def run():
            calls[name] += 1
            return 0.0
        return run
    times = measure.alternate({"fast": runner("fast"), "slow": runner("slow")}, rounds=5,
                              warmup=1, limits={"slow": 2})
    assert len(times["fast"]) == 5 and len(times["slow"]) == 2
    assert calls == {"fast": 6, "slow": 3}


def test_ring_allreduce_model():
    floats, nvlink = 82_240_576, 300e9
    expected = 2 * 7 / 8 * floats * 4 / nvlink + 2 * 7 * 5e-6
    assert comm.ring_allreduce_s(floats, nvlink, 5e-6) == pytest.approx(expected)
    steps = comm.step_model(floats, {"4": 497_868}, compute_s=0.1)
    ethernet = steps["25 Gb/s Ethernet, across nodes"]
    assert ethernet["exact"]["comm_s"] == pytest.approx(2 * 7 / 8 * floats * 4 / 3.125e9 + 14 * 5e-5)
    assert ethernet["PowerSGD r4"]["step_s"] < ethernet["exact"]["step_s"]
    # 128 images a GPU at the published A100 rate, ResNet-50's own cost per image.
    assert comm.assumed_compute_s(comm.RESNET50_TRAIN_FLOPS_PER_IMAGE) == pytest.approx(128 / 2470)


def test_full_pool_window_keeps_the_244_parameters():
    assert full_pool_window(244) == 7  # the earlier work's setting
    assert full_pool_window(112) == 3 and full_pool_window(64) == 1


def test_config_without_ml_collections():
    """The GPU machines may lack ml_collections: the stand-in must carry the step."""
    code = ("import sys; sys.modules['ml_collections'] = None\n"
            "from bt_jax.benchmark.cases import Case\n"
            "from bt_jax.train import reducers\n"
            "from bt_jax.train.optim import make_optimizer\n"
            "c = Case(reducer='powersgd', rank=2).config()\n"
            "assert c.reducer.powersgd.to_dict()['rank'] == 2 and c.optim.batch_size == 8\n"
            "reducers.make_reducer(c); make_optimizer(c, steps_per_epoch=10)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_command_line_takes_absl_flags(tmp_path):
    """scripts/benchmark.py parses absl flags as the other entry points do: a bad value is
    refused by flag name before anything runs; --render rebuilds the markdown from a JSON."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def bench(*args):
        return subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=repo,
                              capture_output=True, text=True, timeout=120)

    bad = bench("--levers=ynn,turbo")
    assert bad.returncode != 0 and "--levers=ynn,turbo: ['turbo'] not in" in bad.stderr
    unpaired = bench("--sizes", "112,244", "--batches", "4", "--estimate")
    assert unpaired.returncode != 0
    assert "--batches (4,) needs one batch per size (112, 244)" in unpaired.stderr
    results = {"machine": {"processor": "cpu", "cpu_count": 2, "cpu_flags": "", "jax": "x",
                           "python": "3", "load_avg_start": 0.0, "load_avg_end": 0.0},
               "wall_s": 1.0, "jobs": [], "command": "python scripts/benchmark.py --quick"}
    (tmp_path / "results.json").write_text(json.dumps(results))
    from bt_jax.benchmark import report
    # a rerun over an earlier markdown keeps its hand-written notes and replaces the rest
    (tmp_path / "out.md").write_text("# Benchmarks\n\nold table\n" + report.HAND_WRITTEN[0]
                                     + "\nnotes by hand\n" + report.HAND_WRITTEN[1] + "\n")
    done = bench("--render", str(tmp_path / "results.json"), "--md", str(tmp_path / "out.md"))
    assert done.returncode == 0, done.stderr[-2000:]
    markdown = (tmp_path / "out.md").read_text()
    assert markdown.startswith("# Benchmarks") and "python scripts/benchmark.py --quick" in markdown
    assert "notes by hand" in markdown and "old table" not in markdown
    assert json.loads((tmp_path / "results.json").read_text()) == results  # input untouched


def test_torch_lars_matches_ours():
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install torch==2.13.0 (the test extra)")
    import optax

    from bt_jax.reference.torch_models import LARS
    from bt_jax.train.optim import lars
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(6, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = LARS([{"params": [tensors["w"]], "lr": 0.5 * 0.2},
                {"params": [tensors["b"]], "lr": 0.5 * 0.0048}], lr=0.5)
    tx = lars(lambda step: 0.5)
    state, ours = tx.init(params), params
    for step in range(3):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
        updates, state = tx.update(grads, state, ours)
        ours = optax.apply_updates(ours, updates)
    for k, t in tensors.items():
        np.testing.assert_allclose(np.asarray(ours[k]), t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_throughput_job_and_report():
    """A tiny throughput job in-process, then the markdown built from its result."""
    spec = {"kind": "throughput", "label": "32px levers", "xla_flags": FAST_CPU_FLAG,
            "fast_cpu": True, "fast_cpu_default": True,
            # TINY's case: both steps were compiled by the test above (the XLA cache).
            "case": dataclasses.asdict(TINY),
            "jax": [{"name": report.OURS_PLAIN, "dtype": "float32", "donate": True, "fused": False},
                    {"name": "ours f32 2B", "dtype": "float32", "donate": True, "fused": True}],
            "torch": [], "rounds": 2, "peak_n": 128}
    result = {"spec": spec, **jobs.throughput(spec)}
    assert set(result["summary"]) == {report.OURS_PLAIN, "ours f32 2B"}
    assert result["xla_flops"][report.OURS_PLAIN] > 0 and result["peaks"]["jax float32"] > 0
    comm_spec = {"kind": "comm", "label": "m", "xla_flags": "",
                 "case": {"image_size": 64, "projector": "16-16"}, "ranks": [1, 4]}
    comm_job = {"spec": comm_spec, **jobs.comm(comm_spec)}
    results = {"machine": {"processor": "cpu", "cpu_count": 2, "cpu_flags": "", "jax": "x",
                           "python": "3", "load_avg_start": 0.0, "load_avg_end": 0.0},
               "wall_s": 1.0, "throughput": [result], "comm": comm_job, "model": None,
               "jobs": [result, comm_job]}
    text = report.render(json.loads(json.dumps(results)), "python scripts/benchmark.py")
    assert "| tiny | 32 | 8 | default (ynn on) | ours f32 2B |" in text
    assert "PowerSGD rank 4" in text and "Peak host memory" in text


def test_gpu_plan_halves_a_batch_that_does_not_fit(monkeypatch):
    """The GPU path's job sequence, with the jobs faked (no GPU here)."""
    from bt_jax.benchmark import plan
    seen = []

    def fake_run_job(spec, **kwargs):
        seen.append((spec["label"], spec["case"]["batch"], [t["name"] for t in spec["torch"]]))
        if spec["case"]["batch"] == 256:
            return {"spec": spec, "error": "exit 1"}
        runners = [v["name"] for v in spec["jax"]] + [t["name"] for t in spec["torch"]]
        stats = {"median_s": 0.5, "q1_s": 0.4, "q3_s": 0.6, "min_s": 0.4, "max_s": 0.7, "n": 10}
        return {"spec": spec, "summary": {r: stats for r in runners}, "images_per_step":
                2 * spec["case"]["batch"], "xla_flops": {"ours bf16": 1e13},
                "peaks": {"jax bfloat16": 7e14}}
    monkeypatch.setattr(plan.jobs, "run_job", fake_run_job)
    results = plan.run_throughput(plan.Options(platform="gpu", sizes=(244,), batches=(256,)))
    assert seen == [("244px alone", 256, []), ("244px alone", 128, []),
                    ("244px with PyTorch", 64, ["PyTorch bf16 autocast"])]
    rows = report.step_rows(results[-1])
    ours = next(r for r in rows if r["runner"] == "ours bf16")
    assert ours["vs_torch"] == pytest.approx(1.0)
    assert ours["mfu"] == pytest.approx(1e13 / 0.5 / 7e14)


def test_jobs_set_their_own_xla_flags():
    """Whatever the shell or an entry point chose, a job runs with the benchmark's flags."""
    shell = {"XLA_FLAGS": f"--xla_cpu_enable_fast_math=true {FAST_CPU_FLAG} "
                          "--xla_force_host_platform_device_count=8",
             "BT_JAX_FAST_CPU": "0", "PATH": "/bin"}
    on = jobs.job_env(True, 2, base=shell)
    assert on["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FAST_CPU_FLAG}"
    assert on["BT_JAX_FAST_CPU"] == "1" and on["PATH"] == "/bin"
    off = jobs.job_env(False, 1, "--xla_cpu_enable_fast_math=false", base=shell)
    assert off["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert off["BT_JAX_FAST_CPU"] == "0"
    assert report.FAST_CPU_FLAG == FAST_CPU_FLAG


def test_jobs_get_the_benchmarks_allocator_not_the_shells():
    shell = {"LD_PRELOAD": "/opt/libtcmalloc.so.4 libother.so", "PATH": "/bin"}
    tc = jobs.job_env(True, 1, base=shell, malloc="libtcmalloc_minimal.so.4")
    assert tc["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    assert tc["BT_JAX_TCMALLOC"] == "1"
    plain = jobs.job_env(True, 1, base=shell)
    assert plain["LD_PRELOAD"] == "libother.so" and plain["BT_JAX_TCMALLOC"] == "0"
    assert "LD_PRELOAD" not in jobs.job_env(True, 1, base={"LD_PRELOAD": "libtcmalloc.so"})
    # The lever adds one job on the default ynn path with the C library's malloc, named so.
    options = plan.Options(fast_cpu_default=True, malloc_default="libtcmalloc_minimal.so.4",
                           levers=("malloc",), bf16="off", xla_flags="")
    specs = plan.first_size_specs(options)
    assert [(s.get("malloc"), fast, len(s["torch"])) for s, fast in specs] == [
        (None, True, 2), ("", True, 2)]
    named = [report.cpu_path({**s, "fast_cpu": fast, "fast_cpu_default": True,
                              "malloc": s.get("malloc", options.malloc_default),
                              "malloc_default": options.malloc_default})
             for s, fast in specs]
    assert named == ["default (ynn on)", "ynn on + C library malloc"]
    none_found = dataclasses.replace(options, malloc_default="")
    assert len(plan.first_size_specs(none_found)) == 1  # nothing to compare against


def test_cpu_paths_are_named_against_the_default():
    options = plan.Options(fast_cpu_default=True, levers=("ynn",), bf16="off")
    assert [(fast, [v["name"] for v in ours]) for fast, ours in plan.lever_variants(options)] == [
        (True, [report.OURS_PLAIN]), (False, [report.OURS_PLAIN])]
    # Where XLA rejects the flag the default is off, and there is nothing to compare.
    rejected = plan.Options(fast_cpu_default=False, levers=("ynn",), bf16="off")
    assert [fast for fast, _ in plan.lever_variants(rejected)] == [False]

    def path(fast, default):
        return report.cpu_path({"fast_cpu": fast, "fast_cpu_default": default,
                                "xla_flags": FAST_CPU_FLAG if fast else ""})
    assert (path(True, True), path(False, True), path(False, False)) == (
        "default (ynn on)", "ynn off", "default (ynn off)")
    assert report.cpu_path({"xla_flags": ""}) == "XLA's default"  # a run from before


def test_default_run_and_quick_fit_their_time(monkeypatch):
    """The time model behind the printed estimate, with the bf16 runners of a CPU that has
    native bf16: headroom for load under 20 min (full) and 5 min (--quick)."""
    # The model prices bf16 autocast by this machine's CPU; the reference CPU has it native.
    monkeypatch.setattr(plan, "native_bf16", lambda: True)
    full = plan.Options(fast_cpu_default=True, bf16="on", malloc_default="libtcmalloc.so")
    assert sum(plan.estimate(full).values()) < 17 * 60
    assert sum(plan.estimate(plan.quick(full)).values()) < 4.5 * 60


def test_powersgd_setting_fits_where_eight_devices_did_not():
    # 8 simulated devices x 1 pair: the run that was OOM-killed at 24 GB.
    assert plan.powersgd_memory(plan.EARLIER_PARAMS, 8, 1, 244)["total_gb"] > 24
    options = plan.Options()
    spec = plan.powersgd_spec(options, None)
    assert spec["memory_estimate"]["total_gb"] < options.powersgd_memory_gb
    assert spec["case"]["batch"] == options.powersgd_devices * options.powersgd_batch
    stats = {"median_s": 10.0, "q1_s": 9.0, "q3_s": 11.0, "min_s": 9.0, "max_s": 11.0, "n": 3}
    job = {"spec": spec, "summary": {"exact": stats, "PowerSGD r4": {**stats, "median_s": 10.5}},
           "images_per_step": 16, "compile_s": {"exact": 40.0, "PowerSGD r4": 80.0}}
    text = report.powersgd_table(job)
    assert "2 simulated devices x 2 pairs each" in text and "**1.050**" in text
    assert "target <= 1.10: met" in text


def test_pytorch_mirrors_the_facenet_recipes():
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install torch==2.13.0")
    from bt_jax.benchmark.torch_step import TorchStep
    for recipe in ("facenet", "mlfw_facenet"):
        case = Case(recipe=recipe, arch="tiny_inception", image_size=80, batch=2,
                    projector="64-64")
        step = TorchStep(case, threads=1)
        step()
        assert np.isfinite(step.loss)
    # The fine-tuning recipe: AdamW, the pretrained head at a tenth of the rate, its
    # BatchNorm on running statistics while training; trunk activations as input.
    assert isinstance(step.optimizer, torch.optim.AdamW)
    assert sorted({g["lr"] for g in step.optimizer.param_groups}) == pytest.approx([1e-4, 1e-3])
    bns = [m for m in step.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert step.views[0].shape[1:] == (112, 1, 1) and step.views[0].dtype == torch.float16


@pytest.mark.slow
def test_facenet_cached_trunk_job_and_report():
    """The recipe's cached-trunk step on the tiny Inception-ResNet, ours against PyTorch in
    one job, then the FaceNet section of the report."""
    pytest.importorskip("torch", reason="needs PyTorch: pip install torch==2.13.0")
    options = plan.Options(fast_cpu_default=True, facenet_arch="tiny_inception",
                           facenet_size=80, trunk_batch=4, facenet_steps=("trunk",), rounds=1,
                           bf16="off")
    (spec, fast), (off, off_fast) = plan.facenet_specs(options)
    assert (fast, off_fast, off["torch"]) == (True, False, [])
    spec = {**spec, "xla_flags": FAST_CPU_FLAG, "fast_cpu": True, "fast_cpu_default": True,
            "peak_n": 128}
    job = {"spec": spec, **jobs.throughput(spec)}
    assert set(job["summary"]) == {report.OURS_PLAIN, "PyTorch f32", "PyTorch f32 channels_last"}
    assert np.isfinite(list(job["loss"].values())).all() and job["xla_flops"][report.OURS_PLAIN] > 0
    results = {"machine": {"processor": "cpu", "cpu_count": 2, "cpu_flags": "", "jax": "x",
                           "python": "3", "load_avg_start": 0.0, "load_avg_end": 0.0,
                           "fast_cpu_default": True, "bf16_native": False},
               "wall_s": 1.0, "facenet": [job], "jobs": [job]}
    text = report.render(json.loads(json.dumps(results)), "python scripts/benchmark.py")
    row = "| FaceNet head after Mixed_7a (cached trunk) | 80 | 4 | default (ynn on) | ours f32 |"
    assert row in text and "## 2. FaceNet steps" in text and "(target <= 1.0x:" in text


def test_headline_takes_our_best_and_gives_like_for_like_ratios():
    """Fake medians with known ratios: ours bf16 0.9 s is our best against PyTorch bf16
    autocast 1.0 s (0.90x); like for like f32 1.2 / 1.1 and bf16 0.9 / 1.0."""
    options = plan.Options(fast_cpu_default=True, bf16="on", facenet_steps=("full",))
    (spec, _), = plan.facenet_specs(options)
    assert [v["name"] for v in spec["jax"]] == [report.OURS_PLAIN, "ours bf16"]
    medians = {report.OURS_PLAIN: 1.2, "ours bf16": 0.9, "PyTorch f32": 1.3,
               "PyTorch f32 channels_last": 1.1, "PyTorch bf16 autocast": 1.0}
    summary = {k: {"median_s": v, "min_s": v, "q1_s": v, "q3_s": v, "n": 1}
               for k, v in medians.items()}
    job = {"spec": {**spec, "fast_cpu": True, "fast_cpu_default": True}, "summary": summary}
    line, = report.headline([job])
    assert ("ours bf16 0.90 s, PyTorch bf16 autocast 1.00 s: **0.90x**, fastest steps 0.90x "
            "(target <= 1.0x: met)") in line
    assert line.endswith("like for like, ours / PyTorch's best: f32 1.09x, bf16 0.90x")
    # A loaded run: PyTorch's median inflated, its fastest step not. No verdict either way.
    summary["PyTorch bf16 autocast"] = {**summary["PyTorch bf16 autocast"], "min_s": 0.6}
    line, = report.headline([job])
    assert "**0.90x**, fastest steps 1.50x (target <= 1.0x: unsettled" in line
    for name in summary:
        summary[name] = {**summary[name], "median_s": 2 * summary[name]["median_s"]}
    summary["ours bf16"]["median_s"] = 2.5
    line, = report.headline([job])
    assert "(target <= 1.0x: missed)" in line


def test_a_rerun_keeps_the_hand_written_section_of_the_markdown():
    from bt_jax.benchmark import report

    earlier = ("# Benchmarks\n\nold tables\n\n" + report.HAND_WRITTEN[0]
               + "\n## Notes\n\nmeasured by hand\n" + report.HAND_WRITTEN[1] + "\n\nmore\n")
    block = report.hand_written_block(earlier)
    assert block.startswith(report.HAND_WRITTEN[0]) and "measured by hand" in block
    assert block.endswith(report.HAND_WRITTEN[1])
    assert report.hand_written_block("# Benchmarks\n\nno notes\n") == ""


@pytest.mark.slow
def test_step_memory_arguments_are_exactly_the_state_and_the_inputs(tiny):
    """XLA's memory analysis of the compiled step, against a known answer: its arguments
    are one device's TrainState and its two views of uint8 images, byte for byte."""
    from bt_jax.benchmark import memory
    from bt_jax.train import reducers
    from bt_jax.train.optim import make_optimizer

    tx, _ = make_optimizer(tiny, steps_per_epoch=1)
    state = memory.abstract_state(tiny, tx, reducers.make_reducer(tiny))
    state_bytes = sum(np.prod(x.shape[1:]) * np.dtype(x.dtype).itemsize
                      for x in jax.tree.leaves(state))
    size = tiny.data.image_size
    inputs = 2 * tiny.optim.batch_size // tiny.num_devices * size * size * 3
    used = memory.step_memory(tiny)
    assert used.arguments == state_bytes + inputs
    assert used.temporaries > 0 and used.peak > used.arguments
    with pytest.raises(ValueError, match="batch 12 does not split over 8 devices"):
        next(memory.sweep(tiny, [""], [12], [False]))
