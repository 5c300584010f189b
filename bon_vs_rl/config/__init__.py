"""Typed configuration, the single source of defaults, YAML keys and --help text: `base.py` holds the field
helpers, the setting groups several commands share and `resolve` (default < YAML < flag); `commands.py`
one dataclass per command. Floor 2: it may import `bon_vs_rl.record` (a config's `validate()` checks where
a run will write) and `bon_vs_rl.errors`, nothing above.
"""
