"""Performance benchmark of the Barlow Twins step: ours against PyTorch and the hardware.

``scripts/benchmark.py`` is the command line; the pieces live here so that they can be
tested and reused:

* ``cases``    the benchmarked configuration, from a recipe in configs/ (built without
  ml_collections if need be);
* ``jax_step`` our train step in its variants (dtype, donation, both views in one pass),
  on images or a frozen trunk's activations;
* ``torch_step`` the same model, loss and optimizer written in PyTorch (ResNet-50,
  Inception-ResNet-v1 whole or after Mixed_7a);
* ``measure``  timing by alternation, matmul peak, peak host memory;
* ``comm``     the on-paper all-reduce model for 8 GPUs;
* ``jobs``     the measurements, each run in its own process with the XLA flags the plan
  gives it (XLA reads them once; the shell's are not used);
* ``plan``     which jobs a run starts (the default CPU path and ynn off, levers at the
  first size, the FaceNet steps, exact vs PowerSGD) and how long they should take;
* ``report``   the markdown tables.

Nothing here is imported by training.
"""
