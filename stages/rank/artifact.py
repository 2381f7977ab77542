"""The `rank` kind's artifact as its consumers read it (torch-free): the file the reward kind and preference
kinds train on, a row per prompt with its answers and their ranks."""

#: the artifact's file: the ranking rows the reward kind reads
RANKINGS_FILE = "rankings.jsonl"
