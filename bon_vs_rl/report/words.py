"""Numbers in words, for the report and its scaling view alike: `fmt` (a number), `span` (a value with its
95% interval), the phrase for each compared quantity, and `multiplicity_note` (how many intervals a table prints)."""

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


def multiplicity_note(frame, what: str) -> str:
    """How many difference intervals `frame` (one row per comparison) prints, and what that many 95% intervals
    mean together: no correction for multiplicity is made, so by chance alone about one in twenty would exclude
    0 if no difference were real. Rows with no common range (target NaN) print no interval and are not counted."""
    shown = frame[np.isfinite(frame["target"].to_numpy(dtype=float)) | frame["quantity"].isin(
        ["gold_at_point", "kl_at_point"])] if len(frame) else frame
    shown = shown[np.isfinite(shown["diff_lo"].to_numpy(dtype=float)) | np.isfinite(shown["diff_hi"].to_numpy(dtype=float))]
    count, resolved = len(shown), int((shown["verdict"] != "unresolved").sum())
    return (f"{what} prints {count} difference interval(s) at 95% ({resolved} resolved), each with no correction "
            f"for multiplicity: were no difference real, about {count / 20:.1f} of them would still exclude 0 by chance, "
            "so read a lone narrow verdict among many with that in mind.")
