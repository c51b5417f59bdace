"""Data: the synthetic masked-face generator, the folder loader and pair datasets."""
