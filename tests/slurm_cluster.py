"""A one-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd from Debian's
packages (`slurm-wlm`), all on localhost, with every file they write (slurm.conf, munge key and socket,
state, spool, logs) in one temporary folder.

No accounting daemon: the executor plugin is told to read job states with `squeue`, and MinJobAge
keeps finished jobs in slurmctld's memory for an hour, so squeue still reports them.

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)

`cluster.env` names the cluster's slurm.conf (SLURM_CONF) and puts first on PATH an `srun` that names it
too: inside a job the plugin's job step (snakemake-executor-plugin-slurm-jobstep 0.6.1) starts the rule
with `srun` in an environment stripped of every SLURM_* variable, so srun would look for the cluster's
configuration where a real cluster keeps it (/etc/slurm, or slurmd's configless cache), not here.

Every daemon is started in the foreground as a child of this process and stopped by its process id
(with the job steps slurmd started) when the block ends, whatever ends it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")  # in start order
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")
PARTITION = "main"

SLURM_CONF = """\
ClusterName=mofatest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, "mungekey", *CLIENTS) if shutil.which(name) is None
            and not Path("/usr/sbin", name).is_file()]


def binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """Start with `start()` (or `with`), stop with `stop()`; `root` holds slurm.conf and the logs."""

    def __init__(self, cpus: int | None = None, memory_mb: int | None = None, timeout_s: float = 60,
                 keep_state: bool = False):
        self.keep_state = keep_state
        self.cpus = cpus or os.cpu_count() or 1
        # What slurmd would report, less a margin for the OS; jobs asking for more are refused at once.
        self.memory_mb = memory_mb or int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        self.timeout_s = timeout_s
        self.root: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.startup_s: float | None = None
        self.env: dict[str, str] = dict(os.environ)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> "SlurmCluster":
        missing = missing_binaries()
        if missing:
            raise SlurmError(f"SLURM binaries not found: {', '.join(missing)} (Debian: apt-get install "
                             "slurm-wlm; `make setup` installs it)")
        begin = time.perf_counter()
        # In /tmp: munged wants every folder above its socket searchable by everyone (pytest's are not).
        self.root = Path(tempfile.mkdtemp(prefix="mofa-slurm-"))
        self.root.chmod(0o755)
        for sub in ("munge", "state", "spool"):
            (self.root / sub).mkdir(mode=0o755)
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, ctld_port=free_port(),
                                               slurmd_port=free_port(), cpus=self.cpus,
                                               memory_mb=self.memory_mb, partition=PARTITION))
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {binary("srun")} "$@"\n')
        shim.chmod(0o755)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{shim.parent}:{os.environ['PATH']}"}
        atexit.register(self.stop)  # also when the interpreter ends on an exception outside any `finally`
        try:
            key = self.root / "munge" / "munge.key"
            subprocess.run([binary("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
            m = self.root / "munge"
            self._spawn("munged", "-F", f"--key-file={key}", f"--socket={m}/munge.socket",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed")
            self._wait_for(lambda: (m / "munge.socket").exists(), "munged to open its socket")
            self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
            self._wait_for(lambda: "UP" in self._client("scontrol", "ping").stdout, "slurmctld to answer")
            self._spawn("slurmd", "-D", "-N", self.host, "-f", str(self.conf))
            self._wait_for(self._node_idle, f"node {self.host} to be idle")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - begin
        return self

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "wb")
        # Its own session: a Ctrl-C at the terminal reaches pytest, which stops the daemons in order.
        self.processes[name] = subprocess.Popen([binary(name), *args], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        log.close()

    def _client(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([binary(name), *args], capture_output=True, text=True, timeout=30, env=self.env)

    def _node_idle(self) -> bool:
        out = self._client("sinfo", "-h", "-N", "-o", "%T").stdout.split()
        return out == ["idle"]

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmError(f"{name} exited with status {process.returncode} while waiting for {what}:"
                                     f"\n{self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmError(f"timed out after {self.timeout_s:.0f} s waiting for {what}:\n"
                         + "\n".join(self.log_tail(name) for name in self.processes))

    def log_tail(self, name: str, lines: int = 20) -> str:
        text = ""
        for path in (self.root / f"{name}.out", self.root / f"{name}.log", self.root / "munge" / f"{name}.log"):
            if path.is_file():
                text += f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # -- stop ----------------------------------------------------------------------------------

    def step_daemons(self) -> list[int]:
        """Process ids of the slurmstepd processes of this cluster's jobs (they leave slurmd's session)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "slurmstepd":
                    continue
                # slurmstepd inherits slurmd's environment, which names this cluster's slurm.conf.
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in env:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by process id (TERM, then KILL)."""
        try:
            if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
                self._client("scancel", "--full", f"--partition={PARTITION}")
                deadline = time.monotonic() + 15
                while self.step_daemons() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            for pid in self.step_daemons() if self.root else []:
                _kill(pid)
            for name in reversed(DAEMONS):
                process = self.processes.get(name)
                if process is None or process.poll() is not None:
                    continue
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            atexit.unregister(self.stop)
            if self.root is not None and not self.keep_state and not self.alive():
                shutil.rmtree(self.root, ignore_errors=True)

    def alive(self) -> list[int]:
        """Process ids of this cluster's daemons and job steps still running."""
        return [p.pid for p in self.processes.values() if p.poll() is None] + (self.step_daemons() if self.root else [])

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
