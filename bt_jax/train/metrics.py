"""The training log: per log interval one JSON record in ``metrics.jsonl`` (loss, learning
rates, images/s, communication), written by process 0; the host pulls device metrics
only when a record is due, and checks them for NaN/Inf then. With
``config.train.tensorboard`` the same records also go to TensorBoard event files in the
workdir, each key a scalar tag at the record's step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from bt_jax.runtime import distributed, parallel
from bt_jax.runtime import workdir as workdir_files
from bt_jax.train import optim


class MetricsWriter:
    """JSON-lines metrics on the host; device values are pulled only when written."""

    def __init__(self, workdir: str):
        self.path = workdir_files.path(workdir, workdir_files.METRICS)

    def write(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _to_python(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        pass  # each record is appended and closed as it is written


def _to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def _tensorboardx():
    """tensorboardX's synchronous event writer and its protobufs. tensorboardX imports
    torch whenever torch is installed (~2 s of a run's start) only so that its
    SummaryWriter takes torch tensors; these take numbers, so unless torch is loaded
    already, the import runs with torch marked missing (None in sys.modules makes
    ``import torch`` raise ImportError, which tensorboardX expects)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2, summary_pb2
    finally:
        if hide:
            del sys.modules["torch"]
    return EventsWriter, event_pb2, summary_pb2


class EventWriter:
    """The records as TensorBoard scalars in ``workdir``'s event files: every numeric key
    but ``step`` is a tag, logged at the record's ``step``.

    tensorboardX's synchronous writer and protobufs, not its SummaryWriter: that one
    writes from a background thread, where a full disk would kill the thread with a
    traceback and the events in its queue would be lost; here a record is on disk when
    ``write`` returns, like metrics.jsonl's, and an error is raised where it happens.
    """

    def __init__(self, workdir: str, start_step: int):
        EventsWriter, event_pb2, summary_pb2 = _tensorboardx()
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        # The file name holds the time in seconds and the host; the suffix keeps attempts
        # started in the same second from different steps apart (from the same step, the
        # earlier file's events would all be purged anyway).
        self._file = EventsWriter(os.path.join(workdir, "events"), f".step{start_step}")
        # A resume trains the steps after its checkpoint again: SessionLog START at the
        # step it starts from tells TensorBoard to drop what earlier files hold from that
        # step on, so the curve shows one attempt (what SummaryWriter's purge_step does).
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._file.write_event(self._event(step=start_step, wall_time=time.time(),
                                           session_log=start))
        self._file.flush()

    def write(self, record: Dict[str, Any]) -> None:
        values = []
        for key, value in record.items():
            value = _to_python(value)  # the learning rates arrive as jax scalars
            if key != "step" and isinstance(value, (int, float)):
                values.append(self._summary.Value(tag=key, simple_value=float(value)))
        self._file.write_event(self._event(step=int(record["step"]), wall_time=time.time(),
                                           summary=self._summary(value=values)))
        self._file.flush()  # on disk now, like metrics.jsonl: a live TensorBoard sees it

    def close(self) -> None:
        self._file.close()


def record_writers(workdir: str, config, start_step: int) -> List[Any]:
    """Where records go: metrics.jsonl and, with config.train.tensorboard, event files.
    Process 0 only: every process holds the same values, and one file each is enough."""
    if not distributed.is_primary():
        return []
    writers: List[Any] = [MetricsWriter(workdir)]
    if config.train.tensorboard:
        writers.append(EventWriter(workdir, start_step))
    return writers


class StepLog:
    """Buffers device metrics and pulls them to the host only when a record is written.

    Every flush also checks the buffered steps for NaN/Inf, so nothing is saved after a
    divergence and the error names the first bad step.
    """

    def __init__(self, workdir: str, schedule, config, step: int, comm=None):
        self.writers = record_writers(workdir, config, step)
        self.schedule, self.config = schedule, config
        self.comm = comm  # (exact floats, floats sent, first compressed step) or None
        self.history, self.first = [], step
        self.start = self.tick = time.time()
        self.warned_zero = False

    def add(self, metrics) -> None:
        self.history.append(metrics)

    def due(self) -> bool:
        return len(self.history) >= self.config.train.log_every_steps

    def flush(self, epoch: int) -> Optional[Dict[str, Any]]:
        if not self.history:
            return None
        host = [{k: float(parallel.local_values(v)[0]) for k, v in m.items()} for m in self.history]
        for offset, values in enumerate(host):
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(
                    f"training diverged at step {self.first + offset + 1}: {values}.")
        self._warn_if_no_signal(host)
        record = self._record(epoch, host)
        self.history, self.first, self.tick = [], record["step"], time.time()
        self.write(record)
        return record

    def _warn_if_no_signal(self, host) -> None:
        """Constant inputs (all-black images) train to nothing without an error: say so
        at the first log interval whose gradients are all exactly zero."""
        if self.warned_zero or any(h["grad_norm"] != 0.0 for h in host):
            return
        self.warned_zero = True
        warnings.warn(f"the gradient is exactly zero at steps {self.first + 1}-"
                      f"{self.first + len(host)}: nothing is being learned. The inputs may have "
                      "no variance (blank or constant images?) or every trained layer is "
                      "frozen; check the data and config.optim.backbone_lr_scale.", stacklevel=2)

    def _record(self, epoch, host) -> Dict[str, Any]:
        o, step = self.config.optim, self.first + len(host)
        lr_weights, lr_biases = optim.group_rates(self.config)
        rates = optim.group_learning_rates(self.schedule, step - 1, lr_weights=lr_weights,
                                           lr_biases=lr_biases)
        elapsed = max(time.time() - self.tick, 1e-9)
        return {"epoch": epoch, "step": step, **rates,
                "loss": float(np.mean([h["loss"] for h in host])),
                "grad_norm": float(np.mean([h["grad_norm"] for h in host])),
                "images_per_s": 2 * o.batch_size * len(host) / elapsed,
                "wall_time": time.time() - self.start, **self._communication(step)}

    def _communication(self, step: int) -> Dict[str, Any]:
        if self.comm is None:
            return {}
        exact, compressed, start = self.comm
        sent = compressed if step > start else exact
        return {"floats_exact": exact, "floats_sent": sent, "compression_ratio": exact / sent}

    def write(self, record: Dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(record)

    def close(self) -> None:
        """Flush and close the event file: at the end, on an error and on preemption."""
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
            return
        # Leaving on an error (a full disk, say): closing must not replace that error.
        with contextlib.suppress(OSError):
            self.close()
