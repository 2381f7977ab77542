"""Config sections several kinds share (torch-free): data, training, sampling, loading and LoRA settings
(`common`), who ranks or judges (`labelers`, `scorers`), and the base configs of the two-kind families, dpo
and kto (`preference`), grpo and rloo (`group_rl`). Imports `core`, `rows` and `measures`; a kind's
`config.py` builds on it."""
