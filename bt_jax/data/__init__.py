"""Data: sources (folder, MLFW release, TFDS ``mlfw``, synthetic), pair samplers, the grain
input pipeline, cleaning and on-device augmentation."""
