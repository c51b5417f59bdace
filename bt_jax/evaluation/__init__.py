"""Evaluation of face embeddings: 1-NN identification, verification, per-group accuracy.

The headline of every identification protocol is the *source-disjoint* accuracy: probes
whose source photo (another mask variant of it) also sits in the gallery are reported
apart, because raw pixels already match those (see identification.py).

* ``protocols``: ``split`` / ``given`` / ``first_source`` gallery-probe assignments;
* ``identification``: the 1-NN evaluator and its views, with bootstrap intervals;
* ``verification``: pairs files, 10-fold accuracy, ROC AUC, TAR at FAR;
* ``groups``: accuracy per group of identities from a CSV;
* ``report``: one run end to end, writing results.json and PNG plots.

Nothing here builds a model: the network's embedder is ``bt_jax.network.embedder``.
"""
