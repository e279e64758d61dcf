"""medclr: contrastive pretraining on medical images, then U-Net fine-tuning.

Importing this package must not touch devices: tests and launchers configure
the number of (fake) devices before JAX initialises its backend.
"""
__version__ = "0.1.0"
