"""Training stages, each runnable as `accelerate launch -m stages.<kind> --config PIPELINE.yaml --stage NAME`."""
