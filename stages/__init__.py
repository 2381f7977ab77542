"""Training stages: one folder per kind (config.py torch-free, stage.py, __main__.py), each runnable as
`accelerate launch -m stages.<kind> --config PIPELINE.yaml --stage NAME`; shared code in stages/common/."""
