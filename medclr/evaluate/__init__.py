"""Scoring: inference, metrics, checkpoint evaluation, the probe, the guard.

May import: infrastructure, data, augment, models.
"""
