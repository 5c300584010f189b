"""The record: what every run writes and how it reaches the user — the results table (`results.py`, one
SQLite table with a documented schema), atomic files and directories (`files.py`), the optional experiment
trackers (`tracking.py`) and the console's progress bars and notes (`console.py`). Floor 1, just above
`bon_vs_rl.errors`: it imports only `bon_vs_rl.errors` (and `bon_vs_rl.__version__`), never config,
analysis, measurement, the methods or the report.
"""
