"""Quiet start-up logs for the command-line scripts. Import and call before jax.

Under ``absl.app`` every INFO record reaches stderr, and two of them greet every run
without helping anyone: jax probing for a TPU on a machine without one ("Unable to
initialize backend 'tpu'") and matplotlib building its font cache ("generated new
fontManager"). Warnings and errors still show.
"""

import logging
import os

# Their INFO lines report start-up only (backend probing, the font cache).
STARTUP_LOGGERS = ("jax", "matplotlib")


def quiet() -> None:
    """Raise the start-up loggers to WARNING and XLA's C++ logs to warnings and above.

    A level the user chose wins: ``TF_CPP_MIN_LOG_LEVEL`` is only defaulted, and jax
    applies ``JAX_LOGGING_LEVEL`` when it is imported, after this call. XLA reads
    ``TF_CPP_MIN_LOG_LEVEL`` when it loads, hence before jax is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    for name in STARTUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_after_flags() -> None:
    """absl INFO off (orbax logs every checkpoint read and write at INFO). Call at the top
    of ``main``: ``absl.app`` sets the verbosity from its flags after start-up."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
