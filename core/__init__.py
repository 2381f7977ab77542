"""The torch-free kernel that the orchestrator (`pipeline/`) and the stages (`stages/`) both import: the run
directory's layout, atomic writes, the run lock, file hashes, fingerprints (with the Hub pins they hash),
manifests, checkpoints, metric history, progress records, errors, number formatting, the vLLM availability
probe and the base config schema, with the hooks a kind's config implements. Row readers are in `rows/`,
what judges compute in `measures/`, config sections several kinds share in `sections/`.

Nothing here imports torch, transformers or accelerate, nor anything outside `core`.
"""
