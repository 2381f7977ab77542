"""The `lm_eval` kind's artifact as its consumers read it (torch-free): lm-eval's results per model."""

#: {model: {"results", "configs", "versions", "n-shot"}} as lm-eval's simple_evaluate returns them
RESULTS_FILE = "results.json"
