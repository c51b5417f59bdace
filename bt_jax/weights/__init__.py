"""Weights from elsewhere: converting VGGFace2 / PyTorch Barlow Twins / FaceNet weights to
Flax (``convert``, reading sources in ``sources``, ``graphdef`` and ``facenet``, mapping slots
in ``slots``), fetching FaceNet's graph (``download``) and loading converted weights
(``pretrained``)."""
