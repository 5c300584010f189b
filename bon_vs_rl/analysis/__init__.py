"""Analysis: the numbers behind every interval and fit, numpy (and scipy inside functions) only —
`fits.py` (Gao et al. eq. 1-2), `statistics.py` (prompts and seeds resampled through the whole pipeline,
percentile intervals, matched comparisons, verdicts) and `findings.py` (one panel analysed, its peaks,
trends and comparisons across proxies). Floor 3: it may import `bon_vs_rl.config`, `bon_vs_rl.record`
and `bon_vs_rl.errors`; it never imports measurement (it works on arrays, so measurement can use it).
"""
