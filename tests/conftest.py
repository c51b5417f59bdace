"""Test setup: simulate 8 CPU devices. This must run before jax is imported anywhere."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

MLFW_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlfw"


def tiny_config():
    """The demo config shrunk so that a whole run takes seconds on 8 CPU devices."""
    from configs_loader import load_config

    config = load_config("synthetic")
    config.data.image_size = 32
    config.data.synthetic.train_identities = 16
    config.data.synthetic.val_identities = 8
    config.data.synthetic.eval_identities = 8
    config.data.synthetic.sources_per_identity = 3
    config.model.projector = "32-32"
    config.optim.batch_size = 16
    config.optim.warmup_epochs = 1
    config.eval.batch_size = 16
    config.train.epochs = 2
    config.train.log_every_steps = 2
    config.train.progress = False
    return config


@pytest.fixture
def tiny():
    return tiny_config()


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
