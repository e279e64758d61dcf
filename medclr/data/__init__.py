"""Host-side data: readers, volumes, preparation, Grain pipelines, host crops.

Includes ContrastiveCrop's boxes and intensity normalisation. May import:
medclr infrastructure and medclr.augment (device crops for the pipeline).
"""
