"""What judges and reports compute (torch-free): bootstrap intervals, the guard against degenerate wins,
IFEval's four metrics and the verdict sentences. Imports `core` and `rows`."""
