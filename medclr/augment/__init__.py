"""Device-side augmentation: presets, ops, crops, DiRA distortions, preview.

May import: medclr infrastructure (errors, sharding), medclr.data.
"""
