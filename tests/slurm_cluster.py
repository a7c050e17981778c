"""A throw-away single-node SLURM cluster for the tests: munged, slurmctld and slurmd on this host.

Everything lives in one temporary folder (munge key and socket, slurm.conf, gres.conf, state, spool,
logs, pid files, client shims); the system's /etc/munge, /etc/slurm and /run are not touched. Clients
(sbatch, squeue, srun, ...) find the cluster through ``SLURM_CONF`` and shims first on ``PATH`` (see
:attr:`SlurmCluster.env`); Slurm's ``AuthInfo=socket=`` points them at this munged. The node offers this host's CPUs and most of its
memory, and a ``gpu`` GRES with no device file, so that rules asking for a GPU are scheduled (they run
on the CPU). Accounting is off, so job status comes from ``squeue`` and ``MinJobAge`` keeps finished
jobs visible for an hour. The daemons run in the foreground as children of this process and are
stopped by their pids.

    with SlurmCluster(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env={**os.environ, **cluster.env})
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "srun", "scancel")
GPUS = 2


def skip_reason() -> str | None:
    """Why this host cannot run the cluster, or None when it can."""
    missing = [name for name in DAEMONS + CLIENTS if not shutil.which(name, path=_sbin_path())]
    if missing:
        return (f"SLURM test cluster needs {', '.join(missing)} "
                "(Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "SLURM test cluster needs root (slurmd runs the jobs as their submitting user)"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        total_kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)  # slurmd drains a node that reports less than configured


class SlurmCluster:
    """Start with ``with SlurmCluster(folder) as cluster:``; ``cluster.env`` is what clients need."""

    def __init__(self, root: Path, *, cpus: int | None = None, min_job_age: int = 3600):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = _memory_mb()
        self.min_job_age = min_job_age
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._processes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (and for Snakemake, which calls them): SLURM_CONF, and PATH with
        the client shims first."""
        return {"SLURM_CONF": str(self.conf), "PATH": os.pathsep.join([str(self.root / "bin"), _sbin_path()])}

    # -- configuration ---------------------------------------------------------------------------
    def slurm_conf(self) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=tokenuni-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # no cgroups in a container: plain process tracking, no task binding, no accounting
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            f"MinJobAge={self.min_job_age}",  # finished jobs stay in squeue: the status source
            "GresTypes=gpu",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
            f"Gres=gpu:{GPUS} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def gres_conf(self) -> str:
        # Slurm drops a gpu GRES without File= ("Removing file-less GPU"); links to /dev/null stand in
        return f"NodeName={self.node} Name=gpu File={self.root / 'fakegpu'}[0-{GPUS - 1}]\n"

    def _write(self) -> None:
        for folder in ("state", "spool", "munge"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o755)
        for index in range(GPUS):  # slurmd wants character devices: links to /dev/null
            (self.root / f"fakegpu{index}").symlink_to("/dev/null")
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.conf.write_text(self.slurm_conf())
        # A real cluster has its slurm.conf at the compiled-in path, so clients need no SLURM_CONF; the
        # slurm-jobstep plugin indeed drops every SLURM_* variable (SLURM_CONF too) before its `srun`.
        # Shims that set SLURM_CONF stand in for that system-wide file.
        (self.root / "bin").mkdir(exist_ok=True)
        for client in CLIENTS:
            shim = self.root / "bin" / client
            shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which(client, path=_sbin_path())} "$@"\n')
            shim.chmod(0o755)
        (self.root / "gres.conf").write_text(self.gres_conf())

    # -- daemons ---------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.out", "w")
        self._processes[name] = subprocess.Popen(
            [shutil.which(name, path=_sbin_path()), *args], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        (self.root / f"{name}.test.pid").write_text(str(self._processes[name].pid))

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}; "
                                       f"see {self.root / (name + '.out')} and {self.root}/*.log:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"SLURM test cluster: no {what} after {timeout:.0f} s; logs in {self.root}:\n{self.logs()}")

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True,
                                env={**os.environ, **self.env})
        return result.stdout.strip() if result.returncode == 0 else ""

    def start(self) -> SlurmCluster:
        self._write()
        m = self.root / "munge"
        self._spawn("munged", ["--foreground", "--force", f"--key-file={m / 'munge.key'}",
                               f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait("munge socket", self.munge_socket.exists, timeout=20)
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])  # -i: ignore state from a former run
        self._spawn("slurmd", ["-D", "-f", str(self.conf)])
        self._wait("idle node", lambda: self.node_state() == "idle")
        return self

    def stop(self) -> None:
        """Cancel what is left on the cluster, then stop the daemons by pid (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self._processes and self._processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", str(os.geteuid())], capture_output=True,
                           env={**os.environ, **self.env}, timeout=30)
        for name in reversed(list(self._processes)):
            process = self._processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    def logs(self, tail: int = 30) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
