"""configs/mlfw_facenet.py with the split at Mixed_6a: the ten block17 and Mixed_7a train too.

The frozen trunk ends at Mixed_6a (8x8x896 activations per 160 px image, cached in
float16: about 115 KB an image instead of 32 KB), so 20.8M of FaceNet's parameters train
instead of 10.5M, and a step costs several times as much; 4 epochs instead of 10, since
the held-out curve levels off after epoch 3 (docs/results.md, "Training deeper").

  python scripts/train.py --config configs/mlfw_facenet_deep.py --workdir runs/mlfw_facenet_deep
"""

from bt_jax.config import sibling_config


def get_config():
    config = sibling_config(__file__, "mlfw_facenet.py")
    config.model.freeze_until = "Mixed_6a"
    config.train.epochs = 4
    config.evals.knn.every_epochs = 1
    return config
