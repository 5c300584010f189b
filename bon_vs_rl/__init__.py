"""bonrl: best-of-n versus KL-constrained RL against a proxy reward model, measured by a gold reward.

Reproduces the set-up of Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model
Overoptimization", on models and budgets of the user's choosing.

Folders by role, imports running down only (README "Code layout"; tests/test_layout.py checks it):
cli.py and experiment.py -> report/ -> methods/ -> measurement/ -> analysis/ -> config/ -> record/ ->
errors.py. This file holds the version alone and imports nothing.
"""

__version__ = "0.1.0"
