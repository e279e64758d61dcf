"""Data: preparing image folders into TFDS records and Grain pipelines over them."""
