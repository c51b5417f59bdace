"""The single named axis that every cross-device collective in bt_jax uses.

All traffic between devices goes through ``AXIS``: BatchNorm statistics, the
Barlow Twins cross-correlation, the gradient reducer and metric averaging.
Keeping it in one place makes the same per-device functions run under
``jax.pmap(..., axis_name=AXIS)`` and ``shard_map`` over a mesh axis of that name.
"""

AXIS = "devices"
