"""A Ray cluster of several nodes on 127.0.0.1 for the tests and the bench: a child process holding it, worker nodes added and removed on request, every node stopped with it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Ray gives a node the machine's network address even when told 127.0.0.1, and then listens on every
# interface; with this variable (made for laptops) its nodes take 127.0.0.1 and listen on it alone. A
# driver joining such a cluster needs it too, or Ray turns 127.0.0.1 into the network address.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Starting a node takes seconds on an idle machine and far longer on a loaded one.
NODE_START_SECONDS = 180


class LoopbackCluster:
    """A head and `workers` worker nodes of `cpus` CPUs each on 127.0.0.1, held by a child process, with
    token authentication on (its own token file) unless `token` is False.

    The child starts without this project on its Python path and outside its checkout, so Ray workers can
    import `core` only from what a driver ships them. Leaving the `with` block stops every node, also when
    the block fails; a child that does not stop is killed with its whole process group.
    """

    def __init__(
        self, workers: int = 1, cpus: int = 1, token: bool = True, ray_version: str | None = None
    ) -> None:
        self.workers, self.cpus, self.token, self.ray_version = workers, cpus, token, ray_version
        self.address = ""
        self._folder: tempfile.TemporaryDirectory | None = None
        self._child: subprocess.Popen | None = None

    def __enter__(self) -> LoopbackCluster:
        # Short: Ray's socket paths live under it and must fit in 107 characters.
        self._folder = tempfile.TemporaryDirectory(prefix="rl-ray-")
        folder = Path(self._folder.name)
        (folder / "token").write_text(secrets.token_hex(32))
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "RAY_ADDRESS") and not name.startswith("RAY_AUTH")
        }
        # A home of its own, as another machine's: what its workers keep (converted models) stays there.
        env.update(
            LOOPBACK_ONLY,
            RAY_TMPDIR=str(folder),
            RAY_USAGE_STATS_ENABLED="0",
            RETRIEVAL_LAB_HOME=str(folder / "home"),
        )
        if self.token:
            env.update(self.auth_env())
        self._child = subprocess.Popen(
            [sys.executable, __file__, str(self.workers), str(self.cpus), self.ray_version or ""],
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its Ray processes join its process group, stopped as one
        )
        try:
            self.address = self._answer()["address"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def auth_env(self) -> dict[str, str]:
        """What a process needs in its environment to join this cluster with its token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.folder / "token")}

    def driver_env(self) -> dict[str, str]:
        """The environment of a command joining this cluster: this one's, on loopback, with the token."""
        return {**os.environ, **LOOPBACK_ONLY, **(self.auth_env() if self.token else {})}

    @property
    def folder(self) -> Path:
        """Where the cluster keeps its token and Ray's session folders."""
        assert self._folder is not None, "the cluster is not started"
        return Path(self._folder.name)

    def add_worker(self) -> None:
        self._ask("add")

    def remove_worker(self) -> None:
        """Remove a worker node at once, as a machine lost: its processes are killed, not drained."""
        self._ask("remove")

    def __exit__(self, *exc) -> None:
        child, self._child = self._child, None
        if child is not None:
            try:
                if child.poll() is None:
                    child.stdin.write("stop\n")
                    child.stdin.flush()
                    child.wait(timeout=NODE_START_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                pass
            finally:
                _kill_group(child)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _ask(self, command: str) -> dict:
        assert self._child is not None, "the cluster is not started"
        self._child.stdin.write(command + "\n")
        self._child.stdin.flush()
        return self._answer()

    def _answer(self) -> dict:
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError(f"the Ray cluster's process ended (exit {self._child.wait()})")
        return json.loads(line)


def _kill_group(child: subprocess.Popen) -> None:
    """Kill what is left of the child's process group (its Ray processes), the child last."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _hold(workers: int, cpus: int, ray_version: str) -> None:
    """In the child: start the nodes, say the address, then add, remove or stop as stdin says."""
    from ray._common.usage import usage_constants, usage_lib
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    def say(**answer) -> None:
        print(json.dumps(answer), flush=True)

    node = {"num_cpus": cpus, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        for _ in range(workers):
            cluster.add_node(**node)
        cluster.wait_for_nodes(NODE_START_SECONDS)
        if ray_version:
            # What a head started by another Ray release records, as a driver reads it when it joins.
            client = cluster.head_node.get_gcs_client()
            metadata = {**usage_lib.get_cluster_metadata(client), "ray_version": ray_version}
            client.internal_kv_put(
                usage_constants.CLUSTER_METADATA_KEY,
                json.dumps(metadata).encode(),
                True,
                ray_constants.KV_NAMESPACE_CLUSTER,
            )
        say(address=cluster.address)
        for line in sys.stdin:
            command = line.strip()
            if command == "add":
                cluster.add_node(**node)
                cluster.wait_for_nodes(NODE_START_SECONDS)
            elif command == "remove":
                cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
            else:
                break
            say(done=command)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _hold(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
