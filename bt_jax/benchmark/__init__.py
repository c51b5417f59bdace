"""Performance benchmark of the Barlow Twins step: ours against PyTorch and the hardware.

``scripts/benchmark.py`` is the command line; the pieces live here so that they can be
tested and reused:

* ``cases``    the benchmarked configuration (built without ml_collections if need be);
* ``jax_step`` our train step in its variants (dtype, donation, both views in one pass);
* ``torch_step`` the same model, loss and LARS written in PyTorch;
* ``measure``  timing by alternation, matmul peak, peak host memory;
* ``comm``     the on-paper all-reduce model for 8 GPUs;
* ``jobs``     the measurements, each run in its own process (XLA flags are read once);
* ``plan``     which jobs a run starts (levers at the first size, the best at the others);
* ``report``   the markdown tables.

Nothing here is imported by training.
"""
