"""The errors every floor of bonrl raises, at the ground floor: this module imports nothing from bonrl.

`ConfigError` is bad input: one line naming the field (or flag) and the fix; the CLI prints it and exits 2,
before any work starts. `NonFiniteError` is a NaN or inf met during the work: the run saves the batch and
stops with exit 1.
"""


class ConfigError(ValueError):
    """Bad input: one line naming the field and the fix. Exit code 2."""


class NonFiniteError(RuntimeError):
    """A NaN or inf in a reward, a KL or a loss: the run stops (exit 1) after saving the batch."""
