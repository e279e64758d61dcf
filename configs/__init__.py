"""Run configurations (`get_config(arg)` files for `--config=configs/X.py:arg`)."""
