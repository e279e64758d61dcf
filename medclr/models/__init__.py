"""Flax NNX models: one encoder shared by pretraining and the U-Net."""
