"""Numbers in words, for the report and its scaling view alike: `fmt` (a number), `span` (a value with its
95% interval) and the phrase for each compared quantity."""

from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------------------------
# 5. The plain-words summary, generated from the numbers above; every figure with its interval.


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}g}"
    return str(x)


def span(value, lo, hi, digits: int = 3) -> str:
    """'0.31 [0.27, 0.35]': a value with its 95% interval (an open side reads '?'; an exact value, alone)."""
    exact = lambda v: isinstance(v, (float, np.floating)) and math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12)  # noqa: E731
    if exact(lo) and exact(hi):
        return fmt(value, digits)
    if not (isinstance(lo, (float, np.floating)) and isinstance(hi, (float, np.floating))) or \
            (not math.isfinite(lo) and not math.isfinite(hi)):
        return fmt(value, digits)
    side = lambda v: fmt(v, digits) if math.isfinite(v) else ("∞" if v == math.inf else "?")  # noqa: E731
    return f"{fmt(value, digits)} [{side(lo)}, {side(hi)}]"


QUANTITY_WORDS = {
    "gold_at_point": "gold gain of the final distilled policy against best-of-{target}",
    "kl_at_point": "KL (nats) of the final distilled policy against best-of-{target}",
    "gold_at_kl": "gold gain at KL {target} nats",
    "kl_at_proxy": "KL (nats) to reach proxy gain {target}",
    "gold_at_proxy": "gold gain at proxy gain {target}",
    "kl_to_gold": "KL (nats) to reach gold gain {target}",
}


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]
