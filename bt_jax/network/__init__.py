"""The network a config describes: the model, its input (images or a frozen trunk's cached
activations), initial weights, the embedding step, and the embedder that evaluation, identify
and export share (``network``, ``embedding``, ``trunk``, ``embedder``)."""
