"""Pools of joined workers that rank 0 grows into idle nodes and shrinks through the batch system.

Runs in rank 0. The parts, each usable and tested on its own:

- :mod:`.policy` decides, as a pure function of what rank 0 sees (queued tasks, free cores, the
  pool's jobs, the idle nodes the batch system reports, the time), which jobs to submit and which
  to cancel, each decision with its reason;
- :mod:`.backends` builds the batch system's command lines (``sbatch``/``squeue``/``scancel``/
  ``sinfo`` for Slurm, and the same for PBS and Flux) and parses what they print. Like
  :mod:`colocate.launch`, it runs nothing.

The pool's jobs run ``colocate join``, whose workers connect to rank 0 over TCP and leave on the
batch system's SIGTERM without losing a task.
"""

from .backends import BACKENDS, JobState, JobTemplate, backend
from .policy import CancelJob, Job, Policy, SubmitJob, View, decide

__all__ = ["BACKENDS", "CancelJob", "Job", "JobState", "JobTemplate", "Policy", "SubmitJob", "View",
           "backend", "decide"]
