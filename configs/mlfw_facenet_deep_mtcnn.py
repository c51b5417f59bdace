"""configs/mlfw_facenet_deep.py trained on two alignments of every train crop: MLFW's own
and the same crop re-aligned from MTCNN's landmarks, so that faces cut from ordinary
photos (scripts/align.py, identify.py --photos) look like what the network trained on
(docs/detection.md, "The round trip"). The re-aligned crops are more variants of the same
source photos, never paired with their twin; twice the images, so half the epochs for the
same number of steps.

  python scripts/align.py --crops --photos ../shared/data/mlfw/train --out data/mlfw_train_mtcnn
  python scripts/train.py --config configs/mlfw_facenet_deep_mtcnn.py \
      --workdir runs/mlfw_facenet_deep_mtcnn
"""

from bt_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "mlfw_facenet_deep.py")
    config.data.train_extra_dir = "data/mlfw_train_mtcnn"
    config.train.epochs = 2
    config.optim.warmup_epochs = 0.5
    return config
