"""r1-lightning: R1-Zero-style reasoning training with PyTorch Lightning."""

__version__ = "0.1.0"
