"""The lm_eval kind: lm-evaluation-harness tasks on the pipeline's models."""
