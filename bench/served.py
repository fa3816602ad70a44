"""The dashboard served on loopback and Debian's Chromium to drive it: shared by the browser tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Debian's package; .ci/run installs it, playwright cannot download one here
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 90  # a cold server on 2 shared cores
STOP_GRACE_S = 10


class ServerFailed(RuntimeError):
    """The server exited or never answered its health check; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=5) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, OSError):
        return False


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def serve(script: str | Path, home: Path, log: Path, env: dict | None = None) -> Iterator[str]:
    """`streamlit run script` on a free loopback port, offline, with `home` as RETRIEVAL_LAB_HOME.

    Yields the base URL once the health check answers; stops the server and its children after.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RETRIEVAL_LAB_HOME": str(home), **(env or {}),
    }  # fmt: skip
    command = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(base_url):
            if server.poll() is not None:
                raise ServerFailed(
                    f"streamlit exited with code {server.returncode}:\n{log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"streamlit did not answer {base_url}/_stcore/health within {SERVER_START_S} s:\n{log_tail(log)}"
                )
            time.sleep(0.05)
        yield base_url
    finally:
        stop(server)


def server_peak_rss_mb(base_url: str) -> float:
    """The high-water mark of resident memory (VmHWM) of the server answering `base_url`, in MB."""
    return server_memory_mb(base_url, "VmHWM")


def server_memory_mb(base_url: str, field: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status (VmRSS: resident now) of the server answering `base_url`, in MB."""
    status = (server_process(base_url) / "status").read_text()
    kilobytes = next(
        line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")
    )
    return int(kilobytes) / 1024


def server_process(base_url: str) -> Path:
    """The /proc folder of the server answering `base_url`."""
    wanted = ["--server.port", base_url.rsplit(":", 1)[-1]]
    for process, arguments in _processes():
        if any(arguments[i : i + 2] == wanted for i in range(len(arguments))):
            return process
    raise ServerFailed(f"no process serves {base_url}")


def _processes() -> Iterator[tuple[Path, list[str]]]:
    """Every running process's /proc folder and command line (those that end while we look are left out)."""
    for process in Path("/proc").iterdir():
        if process.name.isdigit():
            try:
                yield (
                    process,
                    (process / "cmdline").read_bytes().decode(errors="replace").split("\0"),
                )
            except OSError:
                continue


def _stat(process: Path) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's closing parenthesis (the first is the state); [] once it ended."""
    try:
        return (process / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent(process: Path) -> int | None:
    fields = _stat(process)
    return int(fields[1]) if fields else None


def with_descendants(process: Path) -> list[Path]:
    """The process and every process it started (a compiling child, say), by parent id."""
    children: dict[int, list[Path]] = {}
    for other, _ in _processes():
        children.setdefault(_parent(other), []).append(other)
    found, pending = [], [process]
    while pending:
        found.append(pending.pop())
        pending += children.get(int(found[-1].name), [])
    return found


def browser_processes() -> list[Path]:
    """The running Chromium processes: the browser, its renderers, GPU and utility processes.

    By their name (`comm`): Chromium rewrites its children's command lines into one string."""
    found = []
    for process, _ in _processes():
        try:
            if (process / "comm").read_text().strip() == CHROMIUM.name:
                found.append(process)
        except OSError:
            continue
    return found


def cpu_seconds(processes: list[Path]) -> float:
    """CPU seconds (user and system) the processes and their ended children have used so far.

    A child counts in its parent once it has ended (and been waited for), so a compiling child that
    ends between two readings of a process `with_descendants` moves from one sum to the other."""
    # utime, stime, cutime and cstime: the 12th to the 15th of the fields after the command
    ticks = sum(int(value) for process in processes for value in _stat(process)[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(server: subprocess.Popen) -> None:
    """Terminate the server and anything it started; kill what does not stop in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
