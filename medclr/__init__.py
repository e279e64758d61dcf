"""medclr: contrastive pretraining on medical images, then U-Net fine-tuning.

Importing this package must not touch devices: tests and launchers configure
the number of (fake) devices before JAX initialises its backend. It does add
medclr's XLA:CPU defaults to `XLA_FLAGS` (`medclr.xla_defaults`), which only
take effect if JAX has not created its backend yet.
"""
from medclr import xla_defaults

__version__ = "0.1.0"
xla_defaults.apply()
