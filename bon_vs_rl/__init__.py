"""bonrl: best-of-n versus KL-constrained RL against a proxy reward model, measured by a gold reward.

Reproduces the set-up of Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model
Overoptimization", on models and budgets of the user's choosing.
"""

__version__ = "0.1.0"
