"""Training: the shared trainer setup, the loop, pretraining, fine-tuning, ARCO.

May import: infrastructure, data, augment, models, methods, evaluate.
"""
