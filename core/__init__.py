"""The torch-free kernel that the orchestrator (`pipeline/`) and the stages (`stages/`) both import: the run
directory's layout, atomic writes, the run lock, file hashes, fingerprints, manifests, checkpoints, metric
history, progress records, errors, the base config schema and the data readers that check rows.

Nothing here imports torch, transformers or accelerate, nor anything from `pipeline` or `stages`.
"""
