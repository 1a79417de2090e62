#!/bin/bash
# Run a host program and a colocate batch side by side in a Flux instance.
#
#   flux batch -N2 --exclusive launchers/flux/colocate-with.sh BATCH.yaml -- HOST_PROGRAM [ARGS...]
#   (or inside `flux alloc -N2`: launchers/flux/colocate-with.sh BATCH.yaml -- HOST...)
#
# The host runs as `flux run` on COLOCATE_HOST_NCORES cores per node, the colocate world as a
# second `flux run` with one task per spare core (Flux gives the two jobs disjoint cores; rank 0
# takes one of the colocate slots). Both are bound by `python -m colocate.launch pin`. For a
# walltime warning, submit with `flux batch --signal=SIGTERM@120` where your Flux supports it.
# See launchers/slurm/colocate-with.sbatch for all settings and the exit status.
set -euo pipefail
exec "${COLOCATE_PYTHON:-python3}" -m colocate.launch with flux "$@"
