"""The eval kind: policies judged side by side by an independent judge."""
