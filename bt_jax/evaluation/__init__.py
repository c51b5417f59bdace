"""Evaluation of face embeddings: 1-NN identification, verification, per-group accuracy.

The headline of every identification protocol is the *source-disjoint* accuracy: probes
whose source photo (another mask variant of it) also sits in the gallery are reported
apart, because raw pixels already match those (see identification.py).

* ``protocols``: ``split`` / ``given`` / ``first_source`` gallery-probe assignments;
* ``identification``: the 1-NN evaluator and its views, with bootstrap intervals;
* ``verification``: pairs files, 10-fold accuracy, ROC AUC, TAR at FAR;
* ``groups``: accuracy per group of identities from a CSV;
* ``network``: embeddings of a checkpoint, converted weights or an untrained network;
* ``report``: one run end to end, writing results.json and PNG plots.

``network`` builds models (Flax, the converted weights): it is imported where needed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import numpy as np

from bt_jax.evaluation import protocols
from bt_jax.evaluation.features import FeatureTable, l2_normalize, raw_pixels
from bt_jax.evaluation.identification import HEADLINE, Identification

__all__ = ["identification_report", "raw_pixels", "l2_normalize", "FeatureTable",
           "Identification"]


def identification_report(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                          records: Sequence, metric: str) -> Dict[str, Any]:
    """The end-of-training check: 1-NN on the ``first_source`` split of ``records``.

    ``accuracy`` is the source-disjoint accuracy (here every probe, by construction);
    the full summary (views, interval, leak counts) is returned alongside it.
    """
    a = protocols.first_source(records)
    if not a.gallery or not a.probes:
        raise ValueError("no identity has two source photos: the 1-NN split needs at least one")
    chosen = a.gallery + a.probes
    index = {id(r): i for i, r in enumerate(records)}
    features = embed(images[[index[id(r)] for r in chosen]])
    table = FeatureTable([r.path for r in chosen], features)
    summary = Identification(a, metric=metric).evaluate(table).summary
    return {"accuracy": summary["accuracy"], "gallery": summary["gallery"],
            "probes": summary["probes"], "identities": summary["identities"],
            "ci95": summary["ci95"], "leaked_probes": summary["leaked_probes"],
            "views": summary["views"], "headline": HEADLINE}
