#!/bin/bash
# Attach colocate to a Slurm job that is already running, and run a batch on its spare cores.
#
#   launchers/slurm/colocate-attach.sh JOBID BATCH.yaml
#
# Starts one supervising step in the job (srun --jobid=JOBID --overlap), which starts the colocate
# world on every node of the job (another overlapping step) and runs the batch against it. The
# job's own steps are not touched. Which CPUs to use: COLOCATE_SPARE_CORES=LIST (e.g. 6-7) if you
# know them; otherwise every CPU of the job, and colocate's own `co_location.spare_cores: auto`
# picks the idle ones (set COLOCATE_CO_LOCATION_SPARE_CORES to override that too).
# COLOCATE_RANKS_PER_NODE sets the worker ranks per node (default: one per spare CPU).
#
# Stop early and keep the results so far: colocate stop --address colocate-JOBID.address
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 JOBID BATCH.yaml" >&2
    exit 2
fi
exec "${COLOCATE_PYTHON:-python3}" -m colocate.launch attach "$@"
