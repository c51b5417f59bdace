"""FaceNet's Inception-ResNet-v1 (CASIA-WebFace) on MLFW: the model and input settings.

The weights come from a frozen graph (docs/convert.md):

  python scripts/download_facenet.py
  python scripts/convert_weights.py --source <printed path> --out converted_weights/facenet_casia
  python scripts/evaluate.py --config configs/facenet.py --data_dir ../shared/data/mlfw/val \
      --protocol first_file --out runs/facenet_zero_shot/first_file

MLFW's 112 px aligned crops are resized to the 160 px FaceNet was trained at, and scaled as
FaceNet did: RGB, (x - 127.5) / 128 (the 'facenet' preset). The evaluation embedding is the
512-d bottleneck. Zero-shot figures on val: docs/evaluation.md.
"""

from bt_jax.config import base_config, facenet_model


def get_config():
    config = facenet_model(base_config())
    config.data.pair_sampler = "source_aware"
    config.model.projector = "2048-2048"
    config.optim.batch_size = 256
    config.eval.batch_size = 64
    return config
