"""Flax models: the Caffe-style VGGFace2 ResNet (``resnet``), FaceNet's Inception-ResNet-v1
(``inception_resnet``), the projector and the Barlow Twins pair (``barlow``), the backbones
by name (``backbones``) and the CPU-friendly convolutions they share (``ops``)."""
