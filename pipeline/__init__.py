"""The orchestrator: pipeline files, the DAG, plans, the runner, status, report, labeling and export (torch-free)."""
