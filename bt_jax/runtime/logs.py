"""Quiet start-up logs for the command-line scripts. Import and call before jax.

Under ``absl.app`` every INFO record reaches stderr, and two of them greet every run
without helping anyone: jax probing for a TPU on a machine without one ("Unable to
initialize backend 'tpu'") and matplotlib building its font cache ("generated new
fontManager"). Warnings and errors still show, each on one line: Python's default
format repeats the line of source that raised it under every message.
"""

import logging
import os
import warnings

# Their INFO lines report start-up only (backend probing, the font cache).
STARTUP_LOGGERS = ("jax", "matplotlib")

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = (_PACKAGE + os.sep, os.path.join(os.path.dirname(_PACKAGE), "scripts") + os.sep)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the scripts: ``UserWarning: <message>`` on one line.

    Our warnings say what happened and what to do, so they come alone; another library's
    keep their file and line (where to look), but no line of source either.
    """
    where = "" if os.path.abspath(filename).startswith(_OURS) else f"{filename}:{lineno}: "
    return f"{where}{category.__name__}: {message}\n"


def quiet() -> None:
    """Raise the start-up loggers to WARNING and XLA's C++ logs to warnings and above, and
    print warnings on one line each (``format_warning``).

    A level the user chose wins: ``TF_CPP_MIN_LOG_LEVEL`` is only defaulted, and jax
    applies ``JAX_LOGGING_LEVEL`` when it is imported, after this call. XLA reads
    ``TF_CPP_MIN_LOG_LEVEL`` when it loads, hence before jax is imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    warnings.formatwarning = format_warning
    for name in STARTUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_after_flags() -> None:
    """absl INFO off (orbax logs every checkpoint read and write at INFO). Call at the top
    of ``main``: ``absl.app`` sets the verbosity from its flags after start-up."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
