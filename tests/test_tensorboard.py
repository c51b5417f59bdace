"""TensorBoard event files beside metrics.jsonl (config.train.tensorboard): the same scalars,
read back here with tensorboardX's protobufs and the TFRecord framing, no TensorFlow."""

import json
import struct
from collections import defaultdict

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from bt_jax.runtime import distributed
from bt_jax.train import loop, metrics


def _events(path):
    """The Event protos of one event file: each record is a little-endian u64 length, its
    masked CRC-32C, the bytes, and their masked CRC-32C."""
    data, at, events = path.read_bytes(), 0, []
    while at < len(data):
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == masked_crc32c(header)
        body = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == \
            masked_crc32c(body)
        events.append(event_pb2.Event.FromString(body))
        at += 16 + length
    return events


def _scalars(events):
    """{(tag, step): [values in the order written]} of the events' scalar summaries."""
    out = defaultdict(list)
    for event in events:
        for value in event.summary.value:
            out[(value.tag, event.step)].append(value.simple_value)
    return dict(out)


def _jsonl_scalars(path):
    """The same from metrics.jsonl, as float32 (what a TensorBoard scalar holds)."""
    out = defaultdict(list)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                out[(key, record["step"])].append(float(np.float32(value)))
    return dict(out)


def _event_files(folder):
    return sorted(folder.glob("events.out.tfevents.*"))


def test_a_run_writes_every_metrics_jsonl_scalar_to_one_event_file(tiny, tmp_path):
    tiny.evals.knn.every_epochs = 1  # the 1-NN learning curve is logged too
    loop.train_and_evaluate(tiny, str(tmp_path))
    files = _event_files(tmp_path)
    assert len(files) == 1  # one process, one attempt
    events = _events(files[0])
    # A run from step 0 still marks its start, so a stale attempt's events are purged.
    assert events[0].file_version.startswith("brain.Event")
    starts = [(e.step, e.session_log.status) for e in events if e.HasField("session_log")]
    assert starts == [(0, event_pb2.SessionLog.START)]
    written, expected = _scalars(events), _jsonl_scalars(tmp_path / "metrics.jsonl")
    assert written == expected
    tags = {tag for tag, _ in written}
    assert {"loss", "lr_weights", "lr_biases", "grad_norm", "images_per_s", "wall_time",
            "compression_ratio", "val_loss", "knn_accuracy"} <= tags
    steps = sorted({step for tag, step in written if tag == "loss"})
    per_epoch = steps[-1] // tiny.train.epochs
    assert steps[-1] == tiny.train.epochs * per_epoch and len(steps) >= tiny.train.epochs
    assert sorted(step for tag, step in written if tag == "val_loss") == \
        [per_epoch * (e + 1) for e in range(tiny.train.epochs)]


class _Schedule:
    def __call__(self, step):
        return 1.0


def _write(workdir, config, start, records):
    with metrics.StepLog(str(workdir), _Schedule(), config, start) as log:
        for record in records:
            log.write(record)


def test_the_config_field_turns_the_event_files_off(tiny, tmp_path):
    tiny.train.tensorboard = False
    _write(tmp_path, tiny, 0, [{"epoch": 0, "step": 2, "loss": 1.5}])
    assert (tmp_path / "metrics.jsonl").exists()
    assert _event_files(tmp_path) == []


def test_only_process_zero_writes(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    _write(tmp_path, tiny, 0, [{"epoch": 0, "step": 2, "loss": 1.5}])
    assert list(tmp_path.iterdir()) == []


def test_a_resume_appends_a_file_that_purges_the_steps_trained_again(tiny, tmp_path):
    """Checkpoint at step 3, logged up to step 4, resumed from 3: TensorBoard is told to
    drop the first attempt's step 4 (a SessionLog START at step 3 in the new file)."""
    _write(tmp_path, tiny, 0, [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}])
    _write(tmp_path, tiny, 3, [{"step": 4, "loss": 1.0}, {"step": 6, "loss": 0.5}])
    files = _event_files(tmp_path)
    assert [f.name.endswith(suffix) for f, suffix in zip(files, (".step0", ".step3"))] == \
        [True, True]
    first, second = (_events(f) for f in files)
    assert _scalars(first) == {("loss", 2): [3.0], ("loss", 4): [2.0]}
    assert _scalars(second) == {("loss", 4): [1.0], ("loss", 6): [0.5]}
    starts = [(e.step, e.session_log.status) for e in second if e.HasField("session_log")]
    assert starts == [(3, event_pb2.SessionLog.START)]


def test_event_files_are_written_without_loading_torch(tmp_path):
    """tensorboardX would import torch (installed with the test extra) at every run's
    start; the writer keeps it out, and the events still read back."""
    import subprocess
    import sys

    code = ("import sys; from bt_jax.train import metrics; "
            f"w = metrics.EventWriter({str(tmp_path)!r}, 0); w.write({{'step': 1, 'loss': 2.5}}); "
            "w.close(); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    [events] = _event_files(tmp_path)
    assert _scalars(_events(events))[("loss", 1)] == [2.5]
