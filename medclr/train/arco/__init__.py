"""ARCO's semi-supervised fine-tuning mode: pixel sampling, its loss, its step.

May import: infrastructure, data, augment, models, methods.
"""
