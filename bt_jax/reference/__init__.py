"""PyTorch twins of the models and of LARS: the reference for parity tests and the
benchmark. Needs torch (the test extra)."""
