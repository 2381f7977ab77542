#!/usr/bin/env bash
# One `accelerate launch` on this node of a SLURM allocation, with this node's rank: run by `srun` with one
# task per node (see pipeline.sbatch and stage.sbatch). Arguments are passed on to `accelerate launch`.
# MASTER_ADDR / MASTER_PORT come from the sbatch script; GPUS_PER_NODE defaults to SLURM's count.
set -euo pipefail
gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
exec "${PYTHON:-.venv/bin/python}" -m accelerate.commands.launch \
    --num_machines "$SLURM_NNODES" --num_processes $(( SLURM_NNODES * gpus )) --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" "$@"
