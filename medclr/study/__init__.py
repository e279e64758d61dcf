"""Few-label studies: grids of (pretraining arm, label budget, seed) cells.

`grid` turns a study config into arms and cells, `sets` names the data sets
a study may use and prepares them, `cells` runs one cell's commands as a
user would type them, `runner` drives a whole study with resume and
progress, and `report` builds tables and plots from the JSON rows alone.
May import anything in medclr; only launch/ imports it.
"""
