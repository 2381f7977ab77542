"""The `rank` kind: a labeler orders each prompt's K sampled answers, for the reward model to learn from."""
