"""Launcher command builders (colocate.launch) and the plan they make (colocate.launch.run)."""

import shlex

import pytest

from colocate import launch as L
from colocate.launch import run as LL

PY = "python3"
SERVE = ["colocate", "serve", "--address-file", "/w/a"]


# ----- CPU lists -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, cpus", [
    ("0", (0,)), ("0-3", (0, 1, 2, 3)), ("6-7,14-15", (6, 7, 14, 15)),
    (" 3 , 1-2 ", (1, 2, 3)), ("2,2,1", (1, 2)), (5, (5,)), ([3, 1, 3], (1, 3)),
])
def test_parse_cpu_list(text, cpus):
    assert L.parse_cpu_list(text) == cpus


@pytest.mark.parametrize("bad, needle", [
    ("", "expected a CPU list"), ("1-", "expected a CPU list"), ("a", "found 'a'"),
    ("3-1", "runs backwards; write it as '1-3'"), ([-1], "non-negative"), (True, "found True"),
    (["1"], "non-negative integers"),
])
def test_parse_cpu_list_rejects(bad, needle):
    with pytest.raises(ValueError, match=needle):
        L.parse_cpu_list(bad)


def test_format_and_masks():
    assert L.format_cpu_list([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert L.format_cpu_list([]) == ""
    assert L.env_cpu_list([3]) == "3-3"
    assert L.env_cpu_list([3, 4]) == "3-4"
    assert L.cpu_mask([0, 2]) == "0x5"
    assert L.cpu_mask(range(48, 64)) == "0xffff000000000000"
    with pytest.raises(ValueError, match="at least one CPU"):
        L.cpu_mask([])


# ----- splitting a node ------------------------------------------------------------------------
def test_split_cores_lowest_ids_to_the_host():
    assert L.split_cores(range(8), 6) == L.CoreSplit((0, 1, 2, 3, 4, 5), (6, 7))
    assert L.split_cores([4, 5, 6, 7], 1) == L.CoreSplit((4,), (5, 6, 7))
    assert L.split_cores("0-1", 1) == L.CoreSplit((0,), (1,))


def test_split_cores_keeps_smt_siblings_with_the_host():
    # 4 cores x 2 threads, Linux numbering: cpu i and i+4 share a core.
    siblings = {c: ((c + 4) % 8,) for c in range(8)}
    split = L.split_cores(range(8), 2, siblings=siblings)
    assert split == L.CoreSplit((0, 4, 1, 5), (2, 3, 6, 7))


@pytest.mark.parametrize("count", [0, 4, 5, -1])
def test_split_cores_needs_a_core_on_each_side(count):
    with pytest.raises(ValueError, match=r"4 allowed CPUs \(0-3\): expected 1 to 3"):
        L.split_cores(range(4), count)


def test_split_cores_siblings_can_leave_nothing():
    with pytest.raises(ValueError, match="SMT siblings"):
        L.split_cores([0, 1], 1, siblings={0: (1,), 1: (0,)})


@pytest.mark.parametrize("cores, ntasks, expected", [
    ([0], 1, "map_cpu:0"),
    ([0, 1, 2, 3], 4, "map_cpu:0,1,2,3"),
    ([0, 1], 4, "map_cpu:0,1"),                     # tasks wrap around the list
    (list(range(8)), 2, "mask_cpu:0xf,0xf0"),       # equal blocks (cpus-per-task style)
    ([0, 1, 2, 3], 3, "mask_cpu:0xf"),              # uneven: every task gets them all
    ([0, 4, 1, 5], 2, "mask_cpu:0x11,0x22"),        # SMT pairs stay together
])
def test_slurm_cpu_bind(cores, ntasks, expected):
    assert L.slurm_cpu_bind(cores, ntasks) == expected


def test_task_cores_rejects():
    with pytest.raises(ValueError, match="index 2 out of range for 2 tasks"):
        L.task_cores([0, 1], 2, 2)
    with pytest.raises(ValueError, match="at least one core"):
        L.task_cores([], 1, 0)


# ----- Slurm -----------------------------------------------------------------------------------
def test_slurm_host_step_one_task_one_node():
    assert L.slurm_host_step(["./app", "-x"], [0], 1, 1) == [
        "srun", "--overlap", "--job-name=host", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1",
        "--cpu-bind=map_cpu:0", "./app", "-x"]


def test_slurm_host_step_48_ranks_on_4_nodes():
    cmd = L.slurm_host_step(["./lammps"], range(48), 4, 48)
    assert cmd[:6] == ["srun", "--overlap", "--job-name=host", "--nodes=4", "--ntasks=192",
                       "--ntasks-per-node=48"]
    assert cmd[6] == "--cpu-bind=map_cpu:" + ",".join(str(c) for c in range(48))


def test_slurm_host_step_threads_get_blocks():
    cmd = L.slurm_host_step(["./omp"], range(8), 2, 2, extra=["--mem=0"])
    assert cmd[5:] == ["--ntasks-per-node=2", "--cpu-bind=mask_cpu:0xf,0xf0", "--mem=0",
                       "./omp"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"host_cmd": []}, "host command as a non-empty list"),
    ({"host_cmd": "./app"}, "host command as a non-empty list"),
    ({"host_cores": []}, "at least one host core"),
    ({"nodes": 0}, "nodes as an integer >= 1, found 0"),
    ({"ntasks_per_node": 0}, "ntasks_per_node as an integer >= 1"),
])
def test_slurm_host_step_rejects(kwargs, needle):
    args = {"host_cmd": ["./app"], "host_cores": [0], "nodes": 1, "ntasks_per_node": 1, **kwargs}
    with pytest.raises(ValueError, match=needle):
        L.slurm_host_step(**args)


def test_slurm_colocate_step_srun_pmi2():
    assert L.slurm_colocate_step(SERVE, [1], 1) == [
        "srun", "--overlap", "--job-name=colocate", "--nodes=1", "--ntasks=2",
        "--distribution=cyclic", "--overcommit", "--mpi=pmi2",
        "--cpu-bind=mask_cpu:0x2", "env", "COLOCATE_CO_LOCATION_SPARE_CORES=1-1", *SERVE]


def test_slurm_colocate_step_many_nodes():
    cmd = L.slurm_colocate_step(SERVE, range(48, 64), 4, mpi=None, extra=["--mem=8G"])
    assert "--ntasks=65" in cmd and "--nodes=4" in cmd          # 16 workers x 4 nodes + rank 0
    assert not any(a.startswith("--mpi") for a in cmd)
    assert "--cpu-bind=mask_cpu:0xffff000000000000" in cmd
    assert cmd[cmd.index("--mem=8G") + 1:] == [
        "env", "COLOCATE_CO_LOCATION_SPARE_CORES=48-63", *SERVE]
    assert "--ntasks=9" in L.slurm_colocate_step(SERVE, range(48, 64), 4, ranks_per_node=2)


def test_slurm_colocate_step_through_hydra():
    assert L.slurm_colocate_step(SERVE, [6, 7], 2, launcher="mpiexec") == [
        "env", "SLURM_OVERLAP=1", "SLURM_CPU_BIND=mask_cpu:0xc0", "SLURM_JOB_NAME=colocate",
        "mpiexec", "-launcher", "slurm", "-ppn", "2", "-n", "5",
        "env", "COLOCATE_CO_LOCATION_SPARE_CORES=6-7", *SERVE]


def test_slurm_colocate_step_rejects():
    with pytest.raises(ValueError, match="at least one spare core"):
        L.slurm_colocate_step(SERVE, [], 1)
    with pytest.raises(ValueError, match="launcher='pbs': expected 'srun' or 'mpiexec'"):
        L.slurm_colocate_step(SERVE, [1], 1, launcher="pbs")
    with pytest.raises(ValueError, match="ranks_per_node as an integer >= 1, found 0"):
        L.slurm_colocate_step(SERVE, [1], 1, ranks_per_node=0)


def test_slurm_attach():
    assert L.slurm_attach(1234, ["colocate", "info"]) == [
        "srun", "--jobid=1234", "--overlap", "--cpu-bind=none", "colocate", "info"]
    assert L.slurm_attach("77_3", ["x"], nodes=2, ntasks=2, mpi="pmi2", cpu_bind=None) == [
        "srun", "--jobid=77_3", "--overlap", "--nodes=2", "--ntasks=2", "--mpi=pmi2", "x"]
    with pytest.raises(ValueError, match="Slurm job id like 1234.*found 'abc'"):
        L.slurm_attach("abc", ["x"])


def test_slurm_signal_step():
    assert L.slurm_signal_step(12, 1) == ["scancel", "--signal=TERM", "12.1"]
    assert L.slurm_signal_step("12", "batch", "USR1") == ["scancel", "--signal=USR1", "12.batch"]
    with pytest.raises(ValueError, match="job id and step id"):
        L.slurm_signal_step("12", "x")


# ----- mpiexec, PBS, Flux ----------------------------------------------------------------------
def test_mpiexec_serve():
    assert L.mpiexec_serve(3, config="c.yaml", address_file="a") == [
        "mpiexec", "-n", "3", "colocate", "serve", "--config", "c.yaml", "--address-file", "a"]
    assert L.mpiexec_serve(2, extra=["-bind-to", "none"], mpiexec_exe="/opt/mpiexec") == [
        "/opt/mpiexec", "-n", "2", "-bind-to", "none", "colocate", "serve"]
    with pytest.raises(ValueError, match="n=1: a colocate world needs at least 2 ranks"):
        L.mpiexec_serve(1)


def test_local_colocate_step_pins_every_rank():
    assert L.local_colocate_step(SERVE, [2, 3], python=PY) == [
        "mpiexec", "-n", "3", "env", "COLOCATE_CO_LOCATION_SPARE_CORES=2-3",
        PY, "-m", "colocate.launch", "pin", "--cores", "2-3", "--", *SERVE]


def test_pin_and_env_wrappers():
    assert L.pin(["a"], [0, 1], per_task=2, python=PY) == [
        PY, "-m", "colocate.launch", "pin", "--cores", "0-1", "--per-task", "2", "--", "a"]
    assert L.with_env(["a"], {}) == ["a"]
    with pytest.raises(ValueError, match="environment variable name, found 'A B'"):
        L.with_env(["a"], {"A B": "1"})


def test_colocate_commands():
    assert L.run_command("b.yaml", address="a", resume="runs/b") == [
        "colocate", "run", "b.yaml", "--resume", "runs/b", "--address", "a"]
    assert L.run_command("b.yaml", n=4, colocate=["py", "-m", "colocate"]) == [
        "py", "-m", "colocate", "run", "b.yaml", "-n", "4"]
    assert L.stop_command("a") == ["colocate", "stop", "--address", "a"]
    with pytest.raises(ValueError, match="batch file"):
        L.run_command("")


def test_pbs():
    hosts = L.pbs_hosts(["n1\n", "n1\n", "n2\n", "\n", "n1\n"])
    assert hosts == ["n1", "n2"]
    assert L.pbs_host_step(["./app"], range(4), hosts, 4, python=PY) == [
        "mpiexec", "-hosts", "n1,n2", "-ppn", "4", "-n", "8",
        PY, "-m", "colocate.launch", "pin", "--cores", "0-3", "--per-task", "4", "--", "./app"]
    assert L.pbs_host_step(["./app"], [0], hosts, 1, via="pbsdsh", python=PY) == [
        "pbsdsh", "-u", "--", PY, "-m", "colocate.launch", "pin", "--cores", "0", "--", "./app"]
    assert L.pbs_colocate_step(SERVE, [4, 5], hosts, python=PY) == [
        "mpiexec", "-hosts", "n1,n2", "-ppn", "2", "-n", "5",
        "env", "COLOCATE_CO_LOCATION_SPARE_CORES=4-5",
        PY, "-m", "colocate.launch", "pin", "--cores", "4-5", "--", *SERVE]
    with pytest.raises(ValueError, match="pbsdsh starts one task per node"):
        L.pbs_host_step(["./app"], [0, 1], hosts, 2, via="pbsdsh")
    with pytest.raises(ValueError, match="host names in \\$PBS_NODEFILE"):
        L.pbs_hosts(["\n"])


def test_flux():
    assert L.flux_host_step(["./app"], range(4), 2, 2, python=PY) == [
        "flux", "run", "--nodes=2", "--tasks-per-node=2", "--cores-per-task=2",
        "-o", "cpu-affinity=off",
        PY, "-m", "colocate.launch", "pin", "--cores", "0-3", "--per-task", "2", "--", "./app"]
    assert L.flux_colocate_step(SERVE, [4, 5], 1, submit=True, python=PY) == [
        "flux", "submit", "--nodes=1", "--tasks-per-node=2", "--cores-per-task=1",
        "-o", "cpu-affinity=off", "env", "COLOCATE_CO_LOCATION_SPARE_CORES=4-5",
        PY, "-m", "colocate.launch", "pin", "--cores", "4-5", "--", *SERVE]
    with pytest.raises(ValueError, match="world of 1 rank"):
        L.flux_colocate_step(SERVE, [1], 1)


def test_shell_join_round_trips():
    cmd = ["sh", "-c", "echo $HOME 'x'", "a b", ""]
    assert shlex.split(L.shell_join(cmd)) == cmd


# ----- plans (the pure part of colocate.launch.run) ---------------------------------------------
def _alloc(**kw):
    base = {"system": "slurm", "nodes": 2, "allowed": tuple(range(8)), "jobid": "42",
            "tasks_per_node": 6}
    return LL.Allocation(**{**base, **kw})


def _plan(alloc, settings=None, host=("./app",), batch="b.yaml"):
    return LL.make_plan(alloc, settings or LL.Settings(), list(host), batch, python=PY,
                        colocate=["colocate"], cwd="/w")


def test_plan_slurm_from_ntasks_per_node():
    plan = _plan(_alloc())
    assert plan.split == L.CoreSplit(tuple(range(6)), (6, 7))
    assert plan.address == "/w/colocate-42.address"
    assert plan.host == L.slurm_host_step(["./app"], range(6), 2, 6)
    assert plan.serve == L.slurm_colocate_step(
        ["colocate", "serve", "--address-file", "/w/colocate-42.address"], [6, 7], 2)
    assert plan.run == L.pin(["colocate", "run", "b.yaml", "--address", plan.address], [6, 7],
                             python=PY)
    assert plan.stop == ["colocate", "stop", "--address", plan.address]
    assert "host cores 0-5 (6 task(s)/node)" in plan.describe()


def test_plan_settings_override_the_job():
    s = LL.Settings(host_cores="0-3", spare_cores="7", host_tasks_per_node=2, ranks_per_node=1,
                    slurm_mpi=None, config="c.yaml", address="/x/a")
    plan = _plan(_alloc(), s)
    assert plan.split == L.CoreSplit((0, 1, 2, 3), (7,))
    assert plan.host == L.slurm_host_step(["./app"], range(4), 2, 2)
    assert plan.serve == L.slurm_colocate_step(
        ["colocate", "serve", "--config", "c.yaml", "--address-file", "/x/a"], [7], 2, 1,
        mpi=None)


@pytest.mark.parametrize("alloc, s, needle", [
    (_alloc(tasks_per_node=None), LL.Settings(), "how many cores does the host job use"),
    (_alloc(tasks_per_node=8), LL.Settings(),
     "8 CPUs on this node.*so no CPU is left.*--exclusive"),
    (_alloc(tasks_per_node=9), LL.Settings(), "uses 9 CPUs.*so no CPU is left"),
    (_alloc(), LL.Settings(host_cores="0-9"), "names CPUs 8-9 outside the allocation"),
    (_alloc(), LL.Settings(host_cores="0-3", spare_cores="3"), "expected disjoint"),
    (_alloc(), LL.Settings(spare_cores="0"), "not used by the host"),
])
def test_plan_rejects_impossible_layouts(alloc, s, needle):
    with pytest.raises(ValueError, match=needle):
        _plan(alloc, s)


def test_plan_one_cpu_job_says_why_in_words():
    """`sbatch -N 1 --ntasks-per-node=1` without --exclusive: Slurm gives the job one CPU."""
    one = _alloc(nodes=1, allowed=(0,), tasks_per_node=1)
    with pytest.raises(ValueError) as e:
        _plan(one)
    assert str(e.value) == (
        "the allocation has 1 CPU on this node (0) and the host job uses it "
        "(--ntasks-per-node=1 x --cpus-per-task=1), so no CPU is left for colocate. Add "
        "--exclusive to the sbatch options to get every CPU of each node, or ask for more CPUs "
        "than the host uses: --cpus-per-task=2 with COLOCATE_HOST_NCORES=1 "
        "(sbatch --export=ALL,COLOCATE_HOST_NCORES=1 ...)")
    with pytest.raises(ValueError, match=r"uses 2 CPUs \(COLOCATE_HOST_NCORES=2\).*fewer than 2"):
        _plan(_alloc(system="mpiexec", nodes=1, allowed=(0, 1), jobid=None),
              LL.Settings(host_ncores=2))


def test_attach_passes_the_job_nodes_and_leaves_spare_cores_to_auto():
    show = ("JobId=51 JobName=wrap UserId=root(0) JobState=RUNNING NumNodes=3 NumCPUs=6 "
            "NodeList=vnode[1-3] BatchHost=vnode1")
    assert L.slurm_job_nodes(show) == ("vnode[1-3]", 3)
    with pytest.raises(ValueError, match="expected a running job"):
        L.slurm_job_nodes("JobId=51 JobState=PENDING NumNodes=3 NodeList=(null)")
    env = L.slurm_attached_env("vnode[1-3]", 3)
    assert env == {"SLURM_JOB_NODELIST": "vnode[1-3]", "SLURM_NODELIST": "vnode[1-3]",
                   "SLURM_NNODES": "3", "SLURM_JOB_NUM_NODES": "3"}
    assert LL.attached_slurm_env({"COLOCATE_JOB_NODELIST": "n[1-2]", "COLOCATE_NODES": "2"}) \
        == L.slurm_attached_env("n[1-2]", 2)
    assert LL.attached_slurm_env({}) == {}
    # Inside the one-task step: the job's node count, from COLOCATE_NODES.
    alloc = LL.gather("slurm", {"SLURM_JOB_ID": "51", "SLURM_NNODES": "1", "COLOCATE_NODES": "3"})
    assert alloc.nodes == 3
    # Without a list of spare cores the world gets every CPU and chooses (spare_cores: auto).
    auto = _plan(_alloc(tasks_per_node=None), LL.Settings(), host=())
    assert L.SPARE_CORES_ENV not in " ".join(auto.serve)
    assert "--cpu-bind=mask_cpu:0xff" in auto.serve
    told = _plan(_alloc(tasks_per_node=None), LL.Settings(spare_cores="6-7"), host=())
    assert f"{L.SPARE_CORES_ENV}=6-7" in told.serve


def test_plan_attach_and_other_systems():
    attach = _plan(_alloc(tasks_per_node=None), LL.Settings(spare_cores="6-7"), host=())
    assert attach.host is None and attach.split == L.CoreSplit((), (6, 7))
    local = _plan(_alloc(system="mpiexec", nodes=1, jobid=None),
                  LL.Settings(host_ncores=2), host=("./app",))
    assert local.host == L.pin(["./app"], [0, 1], python=PY)
    assert local.serve[:3] == ["mpiexec", "-n", "7"]
    pbs = _plan(_alloc(system="pbs", hosts=("n1", "n2"), tasks_per_node=None, jobid="7.pbs"),
                LL.Settings(host_ncores=4, host_tasks_per_node=4))
    assert pbs.host[:7] == ["mpiexec", "-hosts", "n1,n2", "-ppn", "4", "-n", "8"]
    flux = _plan(_alloc(system="flux", jobid=None), LL.Settings(host_ncores=4))
    assert flux.serve[:4] == ["flux", "run", "--nodes=2", "--tasks-per-node=4"]


def test_settings_from_environment():
    args = LL._parser().parse_args(["plan", "slurm", "--host-ncores", "3"])
    env = {"COLOCATE_HOST_NCORES": "9", "COLOCATE_SPARE_CORES": "5-6",
           "COLOCATE_SLURM_LAUNCHER": "mpiexec", "COLOCATE_START_TIMEOUT": "5"}
    s = LL.settings_from(args, env)
    assert (s.host_ncores, s.spare_cores, s.slurm_launcher, s.start_timeout) == (
        3, "5-6", "mpiexec", 5.0)
    assert s.slurm_mpi == "pmi2"
    with pytest.raises(ValueError, match="COLOCATE_RANKS_PER_NODE='x': expected int"):
        LL.settings_from(args, {"COLOCATE_RANKS_PER_NODE": "x"})


def test_local_task_id():
    assert LL.local_task_id({"SLURM_LOCALID": "3"}) == 3
    assert LL.local_task_id({"MPI_LOCALRANKID": "1"}) == 1
    assert LL.local_task_id({}) == 0
