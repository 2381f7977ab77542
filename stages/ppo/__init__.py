"""Our own PPO on accelerate (TRL has no PPOTrainer). stage.py reads as the algorithm; beside it:
config.py (the settings and the batch arithmetic, torch-free), models.py (the four roles), placement.py
(where they live under each launch: one process, DDP, ZeRO-2/3), rollout.py (sampling and scoring),
update.py (advantages and the clipped updates), losses.py (the math), ptx.py (PPO-ptx), evaluate.py
(SFT vs PPO on held-out prompts)."""
