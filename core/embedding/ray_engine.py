"""Embedding a dataset on Ray Data: files read in the workers, one model per actor, vectors streamed into part files."""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.embedding.clip import backend_in
from core.embedding.config import CPU_BATCH_SIZE, EmbedConfig
from core.embedding.runner import (
    ROWS_PER_PART,
    EmbeddingStream,
    ParquetRun,
    ProgressCallback,
    embed_to_parquet,
    is_folder_out,
    load_embedder,
)
from core.io.parts import PartWriter, embedded_ids, writing, written_by
from core.records import Dataset, Embeddings, Item, Rejected

ENGINES = ("local", "ray")
# What ray.init accepts besides "auto": a head node's GCS address, or a Ray Client address.
_CLUSTER_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")
# Parts are also written when this many seconds have passed since the last: with no cache behind
# the actors, a killed run loses at most this much work.
PART_SECONDS = 60.0
# Ray Data's own progress bars, execution logs and error reports would interleave with the progress bar.
_RAY_DATA_LOGGER = "ray.data"
_RAY_BACKEND_LOG_LEVEL = "RAY_BACKEND_LOG_LEVEL"
# Joining a cluster: a head that does not answer within this many seconds is reported down. Ray's own
# waits are far longer (40 s per attempt on a silent port, 20 attempts on a refused token) and fill the
# terminal with its warnings meanwhile.
JOIN_SECONDS = 5
# Ray retries a GCS connection once a second for this many seconds (a head still starting); the variable
# is read when ray.init connects. Once the head's port has answered, two attempts are enough.
_GCS_WAIT = "RAY_gcs_server_port_wait_time_s"
_ATTEMPTS_AFTER_ANSWER = 2
_AUTH_MODE = "RAY_AUTH_MODE"
# Ray's version-mismatch error names the cluster's versions, then this process's.
_VERSIONS = re.compile(r"Ray: (\S+)\s+Python: (\S+)")
# Every block has these types, whatever its rows hold: Ray Data infers a block's types from its values, so a
# block of unlabelled test rows (labels all null) and one of labelled train rows would not merge.
_ITEMS = pa.schema(
    [("id", pa.string()), ("split", pa.string()), ("label", pa.string()), ("path", pa.string())]
)
# Input blocks at most. A block of one model batch gives progress batch by batch and loses a node only
# the batches it holds, but each block costs the driver a ray.put (about 3 ms here): past this many
# batches the blocks grow instead. Ray Data's from_items makes as many.
_INPUT_BLOCKS = 200
# Ray Data appends this advice to a failed task's message, below the task's own error.
_RAY_RETRY_ADVICE = re.compile(r"\n(Failed to .* after \d+/\d+ attempts|To change retry attempts)")
# How Python joins the tracebacks of chained exceptions, and how Ray colours a worker's name.
_CHAINED = re.compile(
    r"\n\n(?:The above exception was the direct cause of the following exception"
    r"|During handling of the above exception, another exception occurred):\n\n"
)
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# "pyarrow.lib.ArrowTypeError: …" reads as "ArrowTypeError: …".
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*: )")


@dataclass(frozen=True)
class EngineConfig:
    """Where an embedding run computes: in this process, or on Ray Data actors (a local Ray cluster or a running one)."""

    engine: str = field(
        default="local",
        metadata={
            "help": "local: in this process; ray: on Ray Data actors, each loading the model once (writes a folder of part files)",
            "choices": ENGINES,
        },
    )
    address: str | None = field(
        default=None,
        metadata={
            "help": "the Ray cluster to join (--engine ray): auto (the one `ray start` runs on this node), HOST:PORT or ray://HOST:PORT; none starts a local cluster sized to this machine"
        },
    )
    workers: int | None = field(
        default=None,
        metadata={
            "help": "model actors (--engine ray); none: as many as the cluster's nodes hold (each actor's CPUs and GPUs on one node)"
        },
    )
    cpus_per_worker: float = field(
        default=1.0,
        metadata={"help": "CPUs each actor reserves and its torch threads (--engine ray)"},
    )
    gpus_per_worker: float = field(
        default=0.0,
        metadata={
            "help": "GPUs each actor reserves, fractions sharing one (--engine ray); 0 computes on CPUs"
        },
    )

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if (
            self.address is not None
            and self.address != "auto"
            and not _CLUSTER_ADDRESS.fullmatch(self.address)
        ):
            raise ValueError(
                f"address must be auto, HOST:PORT or ray://HOST:PORT, got {self.address!r}"
            )
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError(
                f"workers must be an integer >= 1 or none (as many as the cluster holds), got {self.workers!r}"
            )
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if not self.gpus_per_worker >= 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        ray_only = {
            "address": self.address,
            "workers": self.workers,
            "gpus_per_worker": self.gpus_per_worker or None,
        }
        given = [name for name, value in ray_only.items() if value is not None]
        if self.engine == "local" and (given or self.cpus_per_worker != 1.0):
            raise ValueError(
                f"{', '.join(given) or 'cpus_per_worker'} is an option of engine 'ray'; the local engine got it"
            )


def embed_on_ray(
    dataset: Dataset,
    config: EmbedConfig,
    out: Path,
    engine: EngineConfig = EngineConfig(engine="ray"),
    progress: ProgressCallback | None = None,
    rows_per_part: int = ROWS_PER_PART,
) -> ParquetRun:
    """Embed `dataset` with `config`'s model on Ray Data actors into the folder of part files `out`, resuming what it holds.

    Only file paths travel to the workers, which read, decode, prepare and embed their batches;
    vectors come back to this process as they are made and go into parts (`rows_per_part` rows,
    or PART_SECONDS of work, each), refused files into the folder's _rejected.csv, and the run goes
    on. The local path (embed_to_parquet) embeds the first batch here, which settles the folder's
    model and backend (precision "auto" once, or the parts' own) for every actor. Ray is joined or started
    first (see joined_ray) when actors will have work, and the cluster must hold them (see _actors_held).
    The embedding cache is not used: the folder is the record of what is done. Ctrl-C raises a
    KeyboardInterrupt saying what is kept.
    """
    if engine.engine != "ray":
        raise ValueError(f"embed_on_ray runs engine 'ray', got {engine.engine!r}")
    refuse_file_out(out)
    # Held for the whole run, before the folder is read: a second run into it is refused.
    with writing(out, expected=len(dataset.items)):
        return _embed_on_ray(dataset, config, Path(out), engine, progress, rows_per_part)


def _embed_on_ray(
    dataset: Dataset,
    config: EmbedConfig,
    out: Path,
    engine: EngineConfig,
    progress: ProgressCallback | None,
    rows_per_part: int,
) -> ParquetRun:
    started = time.perf_counter()
    already = embedded_ids(out)
    todo = [item for item in dataset.items if item.id not in already]
    done_before = len(dataset.items) - len(todo)
    report = _Progress(progress, len(dataset.items), done_before)
    rejected, note, written = list(dataset.rejected), None, None
    size = config.batch_size or CPU_BATCH_SIZE
    try:
        # Ray first when its actors will have work: a cluster that cannot be joined, or cannot hold one
        # actor, is told before the model loads.
        on_ray = len(todo) > size
        with joined_ray(engine) if on_ray else nullcontext():
            actors = _actors_held(engine) if on_ray else 0
            # Batch by batch here until one is written (a whole batch may be refused): its part names the
            # model and precision. The first batch is also the local path's check of the folder (its model
            # and precision), made even when the folder already holds every item.
            while note is None or (todo and written is None):
                batch, todo = todo[:size], todo[size:]
                # The files refused when the dataset was read go into the sidecar once.
                refused_before = [] if note is not None else dataset.rejected
                local = embed_to_parquet(
                    Dataset(dataset.name, batch, refused_before),
                    config,
                    out,
                    rows_per_part=rows_per_part,
                )
                rejected += local.rejected[len(refused_before) :]
                note = note or local.precision_note or ""
                report.add(local.computed, len(batch) - local.written)
                written = written_by(out)
            if todo:
                parts = PartWriter(
                    out, *written, rows_per_part=rows_per_part, seconds_per_part=PART_SECONDS
                )
                rejected += _embed_rest(todo, config, written[0], engine, actors, parts, report)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"the parts written to {out} so far are kept; the same command resumes from them"
        ) from None
    report.finish()
    model = written[0] if written else ""
    return ParquetRun(
        model,
        report.computed,
        done_before,
        rejected,
        report.computed,
        0,
        time.perf_counter() - started,
        note or None,
    )


def refuse_file_out(out: str | Path) -> None:
    """Refuse an output named as one file: the Ray engine writes a folder of part files."""
    if not is_folder_out(out):
        raise ValueError(
            f"engine ray writes a folder of part files; {out} names a file, give a folder (no suffix, or ending in /)"
        )


def _embed_rest(
    items: list[Item],
    config: EmbedConfig,
    model: str,
    engine: EngineConfig,
    actors: int,
    parts: PartWriter,
    report: _Progress,
) -> list[Rejected]:
    """Embed `items` on a pool of `actors` actors, writing parts as vectors arrive; the refused items."""
    import ray
    import ray.data

    quiet = logging.getLogger(_RAY_DATA_LOGGER)
    level = quiet.level
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = context.print_on_execution_start = False
    quiet.setLevel(logging.CRITICAL)  # a failure comes back as this run's own one-line error
    rejected: list[Rejected] = []
    batch_size = config.batch_size or CPU_BATCH_SIZE
    try:
        rows = pa.Table.from_pylist(
            [
                {"id": item.id, "split": item.split, "label": item.label, "path": str(item.path)}
                for item in items
            ],
            schema=_ITEMS,
        )
        vectors = ray.data.from_arrow(
            rows, override_num_blocks=min(_INPUT_BLOCKS, -(-len(items) // batch_size))
        ).map_batches(
            _EmbeddingActor,
            fn_constructor_kwargs={
                "config": config,
                "model": model,
                "threads": max(1, int(engine.cpus_per_worker)),
            },
            # Each actor's model call is one Ray batch: give --batch-size for GPU workers, whose memory this process cannot see.
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=engine.cpus_per_worker,
            num_gpus=engine.gpus_per_worker or None,
        )
        for batch in vectors.iter_batches(batch_size=None, batch_format="pyarrow"):
            embeddings, refusals = _received(batch, parts.model)
            parts.rejected(refusals)
            rejected += refusals
            parts.add(embeddings)
            report.add(len(embeddings.ids), len(refusals))
    except ray.exceptions.RayError as error:
        # An actor that cannot load the model, a lost worker: a rerun resumes.
        raise ValueError(f"the Ray run stopped: {why_stopped(error)}") from None
    finally:
        parts.flush()  # vectors already made are kept, however the run ends
        quiet.setLevel(level)
    return rejected


def why_stopped(error: BaseException) -> str:
    """The one line saying why a Ray run failed: the first error of the worker's chain, without Ray Data's retry advice.

    Ray sends a worker's error back as its formatted traceback (the exceptions themselves do not cross
    processes), the first cause first and Ray Data's own wrapper and advice last.
    """
    first = _CHAINED.split(_ANSI_COLOUR.sub("", str(error)), maxsplit=1)[0]
    lines = [
        line.strip()
        for line in _RAY_RETRY_ADVICE.split(first, maxsplit=1)[0].splitlines()
        if line.strip()
    ]
    return _MODULE_PATH.sub("", lines[-1]) if lines else type(error).__name__


def _received(batch: pa.Table, model: str) -> tuple[Embeddings, list[Rejected]]:
    """The vectors of one batch the actors sent back, and the files they refused."""
    column = {
        name: np.array(batch.column(name).to_pylist(), dtype=object)
        for name in ("id", "split", "label", "reason")
    }
    refused = column["reason"] != ""
    kept = ~refused
    dim = batch.schema.field("embedding").type.list_size
    vectors = batch.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    embeddings = Embeddings(
        column["id"][kept].astype(str),
        column["split"][kept].astype(str),
        column["label"][kept],
        vectors[kept],
        model,
    )
    return embeddings, [
        Rejected(name, reason)
        for name, reason in zip(column["id"][refused], column["reason"][refused])
    ]


@contextmanager
def joined_ray(engine: EngineConfig) -> Iterator[None]:
    """Ray joined (engine.address) or started on this machine for the block, unless this process already
    runs it. A Ray started or joined here is shut down when the block ends, or left to the end of the
    process when the block raises. A cluster that cannot be joined is one ValueError saying what to do,
    within about JOIN_SECONDS."""
    import ray

    if engine.engine != "ray":
        raise ValueError(f"joined_ray runs engine 'ray', got {engine.engine!r}")
    if ray.is_initialized():
        yield
        return
    # Ray prints what the cluster reports (a node lost, a task retried, with its raylet's last log lines)
    # to sys.stdout from a thread of its own: the command's output is its own lines, Ray's stay in its logs.
    with tempfile.TemporaryFile("w+") as aside, redirect_stdout(aside):
        _start_ray(engine)
        try:
            yield
        except BaseException:
            # Ray's shutdown frees its core worker under the threads of the Ray Data iteration that the
            # error or Ctrl-C abandoned, which can end the process (status 1) before its one line is
            # printed: 1 Ctrl-C in 5 did here. Ray is left to the process's end instead, its shutdown at
            # exit too: a cluster drops the job of a driver gone, a local Ray is stopped by the reaper
            # process ray.init starts beside it.
            atexit.unregister(ray.shutdown)
            raise
        ray.shutdown()


def _start_ray(engine: EngineConfig) -> None:
    """Join engine.address, or start a local cluster sized to this machine; the workers get this project's `core` package."""
    import ray

    # Ray's C++ layer, read at start-up, logs a line per actor pool (its constructor arguments sit in the
    # object store, ray-project/ray#53727) into the progress bar; its real failures reach us as exceptions.
    settings = {_RAY_BACKEND_LOG_LEVEL: "fatal"}
    if engine.address == "auto":
        settings[_GCS_WAIT] = str(JOIN_SECONDS)
    elif engine.address is not None:
        _check_listening(engine.address)
        # The head answered: a refusal now (a token, the versions) is no head still starting, and retrying it only waits.
        settings[_GCS_WAIT] = str(_ATTEMPTS_AFTER_ANSWER)
    with _ray_output_aside(settings):
        try:
            ray.init(
                address=engine.address,
                include_dashboard=False,
                # The command's own progress bar and messages are the output; actors' logs stay in Ray's log folder.
                log_to_driver=False,
                logging_level=logging.ERROR,
                # Shipped to every worker, so a cluster needs only the requirements installed, not this code.
                runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])]},
            )
        except Exception as error:  # ConnectionError, RuntimeError, a RayError…: ray.init has many
            raise ValueError(_join_failure(engine.address, error)) from None


@contextmanager
def _ray_output_aside(settings: dict[str, str]) -> Iterator[None]:
    """Run a Ray start-up with `settings` in the environment (where the user set none) and its C++ warnings out
    of the terminal: they are written straight to file descriptor 2, before Ray's log level applies."""
    added = {name: value for name, value in settings.items() if name not in os.environ}
    os.environ.update(added)
    sys.stderr.flush()
    terminal = os.dup(2)
    try:
        with tempfile.TemporaryFile() as aside:
            os.dup2(aside.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(terminal, 2)
    finally:
        os.close(terminal)
        for name in added:
            del os.environ[name]


def _check_listening(address: str) -> None:
    """Refuse, within JOIN_SECONDS, a HOST:PORT (or ray://HOST:PORT) where nothing answers."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_SECONDS).close()
    except OSError as error:
        if isinstance(error, ConnectionRefusedError):
            why = "nothing listens on that port"
        elif isinstance(error, TimeoutError):
            why = f"no answer within {JOIN_SECONDS} s"
        else:
            why = error.strerror or str(error)
        raise ValueError(
            f"cannot reach the Ray cluster at {address} ({why}): start its head there "
            f"(ray start --head --port {port}), or give the address `ray start --head` printed"
        ) from None


def _join_failure(address: str | None, error: BaseException) -> str:
    """The one line saying why Ray could not be started or joined, and what to do."""
    import ray.exceptions

    chain = [error]
    while (inner := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(inner)
    text = "\n".join(str(link) for link in chain)
    where = (
        "the Ray cluster on this machine" if address == "auto" else f"the Ray cluster at {address}"
    )
    token_help = (
        "the head's token, in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
        "(`ray get-auth-token` on the head prints it)"
    )
    if (
        any(isinstance(link, ray.exceptions.AuthenticationError) for link in chain)
        or "InvalidAuthToken" in text
    ):
        if os.environ.get(_AUTH_MODE, "").lower() != "token":
            return (
                f"{where} wants a token (Ray's token authentication) and this machine sends none: "
                f"set {_AUTH_MODE}=token here and give it {token_help}"
            )
        return f"{where} refused this machine's token, or it has none: give it {token_help}"
    if len(versions := _VERSIONS.findall(text)) >= 2:
        (ray_there, python_there), (ray_here, python_here) = versions[:2]
        return (
            f"{where} runs Ray {ray_there} on Python {python_there}, this machine Ray {ray_here} on Python "
            f'{python_here}: run the command with the cluster\'s versions (pip install "ray[data]=={ray_there}" '
            f"on Python {python_there}), or start the cluster with this machine's"
        )
    if address is None:
        return f"cannot start Ray on this machine: {why_stopped(chain[-1])}"
    if "Could not find any running Ray instance" in text:
        return (
            "no Ray cluster runs on this machine for --address auto: start one (ray start --head), "
            "or give its head's address (--address HEAD_IP:6379)"
        )
    return f"cannot join {where}: {why_stopped(chain[-1])}"


def _actors_held(engine: EngineConfig) -> int:
    """The actors of the run: engine.workers, or as many as the cluster's nodes hold.

    Refuses, naming what the nodes have, an actor no node can hold and more workers than the nodes
    hold together: Ray would wait for them for ever. An actor's CPUs and GPUs come from one node.
    """
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]

    def held_by(resources: dict[str, float]) -> int:
        held = _fits(resources.get("CPU", 0.0), engine.cpus_per_worker)
        if engine.gpus_per_worker:
            held = min(held, _fits(resources.get("GPU", 0.0), engine.gpus_per_worker))
        return held

    held = sum(held_by(resources) for resources in nodes)
    needs = _amount(engine.cpus_per_worker, "CPU") + (
        f" and {_amount(engine.gpus_per_worker, 'GPU')}" if engine.gpus_per_worker else ""
    )
    has = "; ".join(
        f"{_amount(resources.get('CPU', 0.0), 'CPU')}, {_amount(resources.get('GPU', 0.0), 'GPU')}"
        for resources in nodes
    )
    cluster = f"{_amount(len(nodes), 'node')}: {has}"
    if held == 0:
        raise ValueError(
            f"no node of the Ray cluster can hold an actor of {needs} ({cluster}): "
            "give --cpus-per-worker and --gpus-per-worker that one node has"
        )
    if engine.workers is not None and engine.workers > held:
        raise ValueError(
            f"--workers {engine.workers} actors of {needs} each do not fit the Ray cluster, which holds "
            f"{held} ({cluster}): give --workers {held} or fewer"
        )
    return engine.workers or held


def _fits(available: float, each: float) -> int:
    """How many shares of `each` fit in `available` (a share of 0.1 fits ten times in 1, despite floating point)."""
    return int(available / each + 1e-9)


def _amount(count: float, unit: str) -> str:
    return f"{count:g} {unit}{'' if count == 1 else 's'}"


class _EmbeddingActor:
    """One model per Ray actor: each call reads, decodes, prepares and embeds a batch of files by the project's own path."""

    def __init__(self, config: EmbedConfig, model: str, threads: int) -> None:
        # With the backend the run's first batch settled (its model names it), so no actor checks or chooses again.
        self.embedder = load_embedder(config, backend_in(model))
        if self.embedder.identity != model:
            raise ValueError(
                f"this worker's model is {self.embedder.identity!r}, the run's is {model!r}: give the workers the same checkpoint"
            )
        self.embedder.use_threads(threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [
            Item(id_, split, label, Path(path))
            for id_, split, label, path in zip(
                *(batch.column(name).to_pylist() for name in _ITEMS.names)
            )
        ]
        vectors = np.zeros((len(items), self.embedder.dim), np.float32)
        reasons = [""] * len(items)
        row = {item.id: index for index, item in enumerate(items)}
        for step in EmbeddingStream(Dataset("batch", items), self.embedder, batch_size=len(items)):
            vectors[[row[name] for name in step.embeddings.ids]] = step.embeddings.vectors
            for refusal in step.rejected:
                reasons[row[refusal.name]] = refusal.reason
        return pa.Table.from_arrays(
            [
                *(batch.column(name) for name in ("id", "split", "label")),
                pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.embedder.dim),
                pa.array(reasons, pa.string()),
            ],
            schema=_vectors_schema(self.embedder.dim),
        )


def _vectors_schema(dim: int) -> pa.Schema:
    """What the actors send back: the items' columns, each one's vector (zeros when refused) and why it was refused ("" when not)."""
    return pa.schema(
        [
            *(field for field in _ITEMS if field.name != "path"),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("reason", pa.string()),
        ]
    )


class _Progress:
    """Items done of the dataset and images per second computed, reported to a ProgressCallback."""

    def __init__(self, callback: ProgressCallback | None, total: int, done: int) -> None:
        self.callback, self.total, self.done = callback, total, done
        self.computed, self.started, self.reported = 0, time.perf_counter(), False

    def add(self, computed: int, refused: int) -> None:
        self.computed += computed
        self.done += computed + refused
        self._report()

    def finish(self) -> None:
        """Report once when nothing was left to do, so a progress bar still ends its line."""
        if not self.reported:
            self._report()

    def _report(self) -> None:
        self.reported = True
        if self.callback is not None:
            self.callback(
                self.done, self.total, self.computed / (time.perf_counter() - self.started)
            )
