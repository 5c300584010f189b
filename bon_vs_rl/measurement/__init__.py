"""Measurement: what every method measures through, so a reader checks fairness in one place — the policy
and reward models (`models.py`), prompt sets (`prompts.py`), the sampling engine (`sampling.py`), proxy
and gold scorers (`scorers.py`), the one evaluation every RL-style method runs on the shared evaluation
set (`evaluate.py`) and the unbiased best-of-n estimator (`bon_estimator.py`). Floor 4: it may import
`bon_vs_rl.analysis` (evaluation rows carry their intervals), `bon_vs_rl.config`, `bon_vs_rl.record` and
`bon_vs_rl.errors`, never a method or the report.
"""
