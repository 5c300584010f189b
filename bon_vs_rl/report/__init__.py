"""`bonrl report`, which only selects, draws and writes: `selection.py` reads the rows and each run's
per-prompt records into curves, `measure.py` measures them through analysis/ (points, fits, comparisons),
`figures.py` and `scaling.py` draw (the latter the view across a family of proxies), `words.py` puts
numbers with their intervals into words, and `write.py` writes the Markdown, HTML and CSV directory.
Floor 6: it may import every floor below, the methods included (best-of-n's samples are re-estimated by
the functions that wrote their rows); only the commands (`cli.py`, `experiment.py`) import it.
"""
