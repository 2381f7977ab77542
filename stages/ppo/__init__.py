"""Our own PPO on accelerate (TRL removed its PPOTrainer): models.py (the four roles), rollout.py (sampling
and scoring), losses.py (the math), trainer.py (one iteration), ptx.py (PPO-ptx), evaluate.py (SFT vs
PPO), stage.py (the stage, run by `accelerate launch -m stages.ppo`)."""
