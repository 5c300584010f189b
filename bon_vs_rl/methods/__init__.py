"""The methods, one file each and named for it, each a `bonrl` command: best-of-n (`best_of_n.py`, `bonrl
sample`), the KL-regularized optimum (`tilted.py`), PPO (`ppo.py`), TRL's RLOO / GRPO (`trl_rl.py`, `bonrl
rl`), DPO (`dpo.py`), best-of-n distillation (`distill.py`), the exact Goodhart lab (`lab.py`) and the proxy
reward model (`reward_model.py`, `bonrl train-rm`). Floor 5: a method may import measurement, analysis,
config, record and errors, and another method (PPO's helpers, say), never the report or the commands.
"""
