"""Test setup: simulate 8 CPU devices. This must run before jax is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The entry points turn on the fast CPU path when XLA accepts it; tests compare runs in
# this process with runs of the scripts, so both sides must use the same setting.
from bt_jax.runtime.devices import fast_cpu  # noqa: E402  (imports no jax)

fast_cpu([])

# One XLA compilation cache for the whole session, shared with the subprocesses that tests
# start: the tiny model's steps compile once instead of once per run (~40 s -> ~8 s).
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="bt_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

MLFW_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlfw"


# The demo config shrunk so that a whole run takes seconds on 8 CPU devices: 16 training
# identities x 9 images, all_pairs -> 4 pairs each -> 4 steps per epoch at batch 16.
TINY = {
    "data.image_size": 32,
    "data.synthetic.train_identities": 16,
    "data.synthetic.val_identities": 8,
    "data.synthetic.eval_identities": 8,
    "data.synthetic.sources_per_identity": 3,
    "model.projector": "32-32",
    "optim.batch_size": 16,
    "optim.warmup_epochs": 1,
    "eval.batch_size": 16,
    "train.epochs": 2,
    "train.log_every_steps": 2,
    "train.progress": False,
}


def tiny_config():
    from configs_loader import load_config

    config = load_config("synthetic")
    for key, value in TINY.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def tiny_flags():
    """TINY as command-line overrides of configs/synthetic.py."""
    return [f"--config.{key}={value}" for key, value in TINY.items()]


@pytest.fixture
def tiny():
    return tiny_config()


# Generated face folders (bt_jax.data.synthetic): SMALL is the folder the data tests read
# (6 identities x 3 photos x 3 variants at 32 px, the masked ones listed in masked.txt).
SMALL = dict(num_identities=6, sources_per_identity=3, masked_variants=2, image_size=32,
             progress=False)


@pytest.fixture(scope="session")
def synthetic_faces(tmp_path_factory):
    """``synthetic_faces(name, **settings)`` writes a new synthetic face folder under a
    fresh temporary ``name`` folder (no progress bar) and returns its path."""
    from bt_jax.data import synthetic

    def write(name, **settings):
        return synthetic.write_synthetic_dataset(tmp_path_factory.mktemp(name),
                                                 **{"progress": False, **settings})

    return write


@pytest.fixture(scope="module")
def synth(synthetic_faces):
    """The SMALL folder, written once per test file."""
    return synthetic_faces("synth", **SMALL)


class CompileCounter:
    """Counts XLA backend compilations while active: a guard against silent retracing."""

    def __init__(self):
        import jax

        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, duration, **kwargs):
        if self.active and name == "/jax/core/compile/backend_compile_duration":
            self.count += 1


_COUNTER = None


@pytest.fixture
def compile_counter():
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = CompileCounter()
    _COUNTER.count, _COUNTER.active = 0, True
    yield _COUNTER
    _COUNTER.active = False


# The real FaceNet graph (fetched once per machine into the bt_jax cache) and its Flax
# conversion: shared by the conversion, fine-tuning and PyTorch parity tests.
@pytest.fixture(scope="session")
def graph_path():
    from bt_jax.weights import download

    try:
        return download.fetch()
    except download.FetchError as e:
        pytest.skip(f"the FaceNet graph cannot be fetched here: {e}")


@pytest.fixture(scope="session")
def converted(graph_path, tmp_path_factory):
    from bt_jax.weights import convert

    out = str(tmp_path_factory.mktemp("facenet") / "casia")
    manifest = convert.convert_file(graph_path, out)
    return out, manifest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a jax.distributed coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The files whose tests take longest, longest first (seconds per file with --durations=0
# on 2 cores, 2026-12-03: 344, 139, 137, 136, 118, 103, 69, 65, 65, 62, 61, 50). xdist's
# --dist loadfile hands whole files to the two workers in collection order (pyproject's
# --no-loadscope-reorder: by default xdist re-sorts files by their number of tests,
# which ignored this order): a long file collected last kept one worker busy for minutes
# after the other had finished. Started first, the short files fill in around them.
LONGEST_FILES_FIRST = ("test_robustness.py", "test_facenet.py", "test_train.py",
                       "test_ops.py", "test_benchmark.py", "test_trunk.py",
                       "test_evaluation.py", "test_bad_input.py", "test_detect.py",
                       "test_identify.py", "test_onnx.py", "test_model.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
