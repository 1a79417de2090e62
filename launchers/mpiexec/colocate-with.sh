#!/bin/bash
# Run a host program and a colocate batch side by side on this machine (no batch system).
#
#   COLOCATE_HOST_NCORES=6 launchers/mpiexec/colocate-with.sh BATCH.yaml -- HOST_PROGRAM [ARGS...]
#
# The host program runs bound to the lowest COLOCATE_HOST_NCORES CPUs this process may use (an
# `mpiexec -n 6 ./app` host command keeps that binding for its ranks); a colocate world
# (mpiexec -n R colocate serve) runs bound to the rest. SIGTERM or Ctrl-C drains colocate, a
# second one ends everything. See launchers/slurm/colocate-with.sbatch for all settings and the
# exit status.
set -euo pipefail
exec "${COLOCATE_PYTHON:-python3}" -m colocate.launch with mpiexec "$@"
