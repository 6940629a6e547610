"""Starting the worker's children and seeing them end: a fork server's children (ForkLauncher: each
file's process a fork of a server that preloaded the pipeline, the worker's store lent to them) or,
where the platform cannot fork, `ingest_one_file.py` subprocesses (SubprocessLauncher); a child's entry
(child_main), its supervision on stopping (SIGTERM, then SIGKILL after GRACE_SECONDS), and a dead
fork server told from a child's own exit (ForkServerLost).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ingestion.common import procinfo
from ingestion.common.errors import EXIT_BUG, ForkServerLost, IngestionError
from ingestion.common.settings import Config
from ingestion.run import job, preflight

log = logging.getLogger("ingestion")
INGEST_SCRIPT = Path(__file__).resolve().parents[1] / "ingest_one_file.py"


def child_main(owner_pid: int, budget: int, held: list[str], report, link=None) -> int:
    """What a child runs: its own session (a terminal's Ctrl-C goes to the worker, which forwards it),
    then job.work. report(code, path, why) tells the worker each file's outcome; link: the worker's store."""
    from ingestion.common import cli, settings

    if os.getsid(0) != os.getpid():  # (a SubprocessLauncher child is started in a session of its own)
        os.setsid()
    cli.setup_logging()
    stop = job.StopFlag().install()
    try:
        return job.work(settings.load(), owner_pid, budget, set(held), stop, report, link)
    except IngestionError as e:
        print(f"error: {cli.redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except Exception:
        log.exception("unexpected error in a worker's child (a bug; please report it with this traceback)")
        return EXIT_BUG


def _fork_child(owner_pid: int, budget: int, held: list[str], conn, store_conn) -> None:
    from ingestion.storage.lent_store import StoreLink

    def report(code: int, path: str, why: str) -> None:
        try:
            conn.send((code, path, why))
        except OSError:  # the worker is gone (killed): the queue holds the file's fate anyway
            pass

    code = child_main(owner_pid, budget, held, report, StoreLink(store_conn))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_embedding_child(conn) -> None:
    from ingestion.common import settings

    try:
        preflight.check_embedding(settings.load())
        conn.send(None)
    except IngestionError as e:
        conn.send(e)
    except Exception as e:  # a bug: said in one line by the worker
        conn.send(IngestionError(f"checking the tokenizer and the embeddings API failed: {type(e).__name__}: {e}"))
    conn.close()


def _supervise(pid: int, alive, signal_child, stop: job.StopFlag, grace: float) -> None:
    """Wait for the child; on SIGTERM forward it, and kill the child after the grace period (its file then
    goes back to pending: outcomes.after_death)."""
    forwarded_at = None
    killed = False
    while alive(0.2):
        if stop() and forwarded_at is None:
            signal_child(signal.SIGTERM)
            forwarded_at = time.monotonic()
        elif forwarded_at is not None and time.monotonic() - forwarded_at > grace:
            if not killed:
                log.warning("process %d was still busy %gs after SIGTERM (GRACE_SECONDS): killing it", pid, grace)
                killed = True
            signal_child(signal.SIGKILL)


# Process.start() polls every child this process started, from whichever thread starts one; two threads
# reading one forkserver child's exit status at once make one of them see 255 (CPython's popen_forkserver
# reads a pipe). So children are started, and their exits read, under one lock.
_PROCS = threading.Lock()


def start_child(proc) -> int | None:
    """Start proc from the fork server; returns the pid of the server that forked it."""
    with _PROCS:
        proc.start()
        return fork_server_pid()


def fork_server_pid() -> int | None:
    """The pid of the fork server this process started last (None: none yet). CPython keeps it, unexported,
    in multiprocessing.forkserver; its ensure_running() reaps a dead server and starts a new one."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def _forget_fork_server() -> None:
    """Make CPython start a new fork server at the next child. It reads its dead server's exit status with
    waitpid before starting another; when something else in the process read it first, that waitpid fails
    (ECHILD) at every start, and without this the worker would try to start a child forever."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None:
        return
    with contextlib.suppress(OSError, TypeError):
        os.close(server._forkserver_alive_fd)
    server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None


def child_exit(proc, timeout: float | None) -> int | None:
    """The child's exit code, waiting up to timeout seconds (None: until it exits); None while it runs."""
    from multiprocessing.connection import wait

    if not wait([proc.sentinel], timeout):
        return None
    with _PROCS:
        return proc.exitcode


class ForkLauncher:
    """Children forked from a fork server that preloaded the pipeline (no Chroma client, socket or
    thread exists in the server). The worker opens the store once and lends it to every child
    (lent_store), so children run side by side and none of them opens Chroma.

    A fork server that dies is replaced (CPython's ensure_running starts a new one when a child is
    started); lost again before a child of a newer one reported a file, the run stops (ForkServerLost)."""

    shares_store = True
    LOST_IN_A_ROW = 2  # fork servers lost with no file done in between: the run stops
    START_TRIES = 4  # starts of one child that fail, each with a new fork server: the run stops (never a spin)

    def __init__(self, cfg: Config, start: bool = True):
        from multiprocessing import forkserver

        from ingestion.common.settings import PROJECT_ROOT

        self.cfg = cfg
        self.shared = None  # the worker's open store, once the first child needs it (lent_store.Shared)
        self.store_lock = threading.Lock()
        self.lost: set[int] = set()  # pids of fork servers found dead
        self.lost_in_a_row = 0       # of them, lost since a child of a living one last reported a file
        self.servers_lock = threading.Lock()
        # the server is a new interpreter that takes no sys.path from us before preloading: give it ours,
        # and not the working directory, which `python -c` puts first (an `ingestion` folder there, another
        # checkout's, would be what the children run)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        os.environ["PYTHONSAFEPATH"] = "1"
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["ingestion.run.fork_preload"])
        if start:  # now, so that it imports the pipeline while this process checks the store
            forkserver.ensure_running()

    def __enter__(self) -> "ForkLauncher":
        return self

    def __exit__(self, *exc) -> None:
        if self.shared is not None:
            self.shared.store.close()
            self.shared = None

    def check_embedding(self, cfg: Config) -> None:
        """preflight.check_embedding in a child of the fork server (which has the openai client and the tokenizer
        loaded: the worker itself never loads them); its error, if any, is raised here."""
        def make():
            reader, writer = self.ctx.Pipe(duplex=False)
            return self.ctx.Process(target=_check_embedding_child, args=(writer,), daemon=True), [reader, writer]

        while True:
            child, (reader, writer), server = self._start(make)
            writer.close()
            try:
                answered, error = True, reader.recv()
            except EOFError:
                answered, error = False, None
            reader.close()
            code = child_exit(child, None)
            if not answered:
                if code == 255 and self._server_gone(server):
                    continue  # the server died before the check had its answer: asked again of a new one
                error = IngestionError(f"the check of the embeddings API ended without an answer (exit status {code})")
            if error is not None:
                raise error
            return

    def _start(self, make) -> tuple:
        """Start a child: make() returns (the process, its pipes). Returns them and the pid of the fork server
        that forked it. A server found dead, idle or while it starts the child, is said once and replaced;
        lost again before a file was done: ForkServerLost."""
        tries = 0
        while True:
            previous = fork_server_pid()
            if previous is not None and not procinfo.pid_alive(previous):
                self._lost_server(previous)  # (died idle, or before the first child)
            with self.servers_lock:
                if self.lost_in_a_row >= self.LOST_IN_A_ROW:
                    raise ForkServerLost(
                        f"the fork server was lost {self.lost_in_a_row} times with no file done in between "
                        f"(pids {', '.join(map(str, sorted(self.lost)))}; killed: out of memory?); the files in "
                        "flight were finished or went back to pending: run again")
            child, pipes = make()
            with _PROCS:  # (start_child's lock: the server's pid read here is the one asked to fork this child)
                previous = fork_server_pid()
                try:
                    child.start()
                    failed = None
                except (OSError, EOFError) as e:  # the server died as it was asked for the child
                    failed = e
                server = fork_server_pid()
            if previous is not None and previous != server:
                self._lost_server(previous)  # (it died a moment before: CPython started another)
            if failed is None:
                return child, pipes, server
            for conn in pipes:  # (a child forked before the server died finds them closed: it releases its file)
                conn.close()
            if server is None:
                raise ForkServerLost(f"cannot start the fork server: {failed}")
            if isinstance(failed, ChildProcessError):  # its exit was read elsewhere: CPython would never start another
                self._lost_server(server)
                _forget_fork_server()
            elif not self._server_gone(server):
                raise failed
            tries += 1
            if tries >= self.START_TRIES:
                raise ForkServerLost(f"cannot start a child: the fork server failed {tries} times in a row ({failed!r})")

    def _server_gone(self, server: int | None) -> bool:
        """After CPython said 255 (a child's exit status, or the server's pipe closed): True when the fork server
        that forked the child is dead (recorded), False when it lives (255 was the child's own status)."""
        if server is None:
            return False
        deadline = time.monotonic() + 1.0
        while procinfo.pid_alive(server):  # (its pipes close a moment before it is seen dead)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        self._lost_server(server)
        return True

    def _lost_server(self, server: int) -> None:
        """Record that this fork server is dead, and say so once."""
        with self.servers_lock:
            if server in self.lost:
                return
            self.lost.add(server)
            self.lost_in_a_row += 1
            last = self.lost_in_a_row >= self.LOST_IN_A_ROW
        log.error("the fork server (pid %d) is gone (killed: out of memory, or by hand?): the processes it started "
                  "finish their files, the file of one that dies goes back to pending; %s", server,
                  "it was lost again before a file was done, so this run stops" if last else
                  "a new fork server starts the next files")

    def _reported(self, server: int | None) -> None:
        """A child reported a file: a child of a living server did, the fork server is fine again."""
        with self.servers_lock:
            if server not in self.lost:
                self.lost_in_a_row = 0

    def _shared_store(self):
        from ingestion.storage.lent_store import Shared
        from ingestion.storage.store import Store

        with self.store_lock:
            if self.shared is None:
                self.shared = Shared(Store(self.cfg))
            return self.shared

    def run(self, owner_pid: int, budget: int, held: set[str], stop: job.StopFlag, grace: float):
        """One child: (its exit code, None when it cannot be known (its fork server died), its pid, the
        outcomes it reported)."""
        from ingestion.storage import lent_store

        shared = self._shared_store()

        def make():
            reader, writer = self.ctx.Pipe(duplex=False)
            mine, theirs = self.ctx.Pipe(duplex=True)
            child = self.ctx.Process(target=_fork_child, args=(owner_pid, budget, sorted(held), writer, theirs),
                                     daemon=False)
            return child, [reader, writer, mine, theirs]

        child, (reader, writer, mine, theirs), server_pid = self._start(make)
        writer.close()
        theirs.close()
        server = threading.Thread(target=lent_store.serve, args=(shared, mine), daemon=True)
        server.start()
        done: list[tuple[int, str, str]] = []
        ended = [False]
        orphan = [False]  # its fork server died: the child lives on, watched by its pid

        def alive(timeout: float) -> bool:
            if not ended[0]:
                while reader.poll(timeout):
                    try:
                        done.append(reader.recv())
                        self._reported(server_pid)
                    except EOFError:
                        ended[0] = True
                        break
                    timeout = 0
            if orphan[0]:
                if ended[0]:  # (it closed its pipe: it is exiting)
                    time.sleep(0.05)
                return procinfo.pid_alive(child.pid)
            # (the child closed its pipe: wait for its exit)
            code = child_exit(child, timeout if ended[0] else 0)
            if code == 255 and self._server_gone(server_pid):
                orphan[0] = True
                return procinfo.pid_alive(child.pid)
            return code is None

        def signal_child(sig: int) -> None:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

        _supervise(child.pid, alive, signal_child, stop, grace)
        code = None if orphan[0] else child_exit(child, None)
        while not ended[0] and reader.poll(0):
            try:
                done.append(reader.recv())
            except EOFError:
                break
        reader.close()
        server.join(self.cfg.chroma_timeout + 10)  # what the child sent is written before its fate is decided
        mine.close()
        return code, child.pid, done


class SubprocessLauncher:
    """Where the platform cannot fork: each child a fresh `ingest_one_file.py` process that opens the
    store itself (so one child at a time)."""

    shares_store = False

    def __init__(self):
        log.info("this platform has no fork server: each child is a new Python process (slower start)")

    @staticmethod
    def check_embedding(cfg: Config) -> None:
        preflight.check_embedding(cfg)

    def __enter__(self) -> "SubprocessLauncher":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, owner_pid: int, budget: int, held: set[str], stop: job.StopFlag, grace: float):
        cmd = [sys.executable, str(INGEST_SCRIPT), "--child", str(owner_pid), "--budget", str(budget),
               "--held", json.dumps(sorted(held))]
        child = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, text=True)
        done: list[tuple[int, str, str]] = []
        reader = threading.Thread(target=_read_child, args=(child.stdout, done), daemon=True)
        reader.start()

        def alive(timeout: float) -> bool:
            try:
                child.wait(timeout=timeout)
                return False
            except subprocess.TimeoutExpired:
                return True

        _supervise(child.pid, alive, child.send_signal, stop, grace)
        child.wait()
        reader.join(timeout=5)
        return child.returncode, child.pid, done


def _read_child(stream, done: list) -> None:
    """Pass the child's output on, keeping its `@@done [CODE, PATH, WHY]` lines for the tally."""
    for line in stream:
        if line.startswith("@@done "):
            done.append(tuple(json.loads(line[len("@@done "):])))
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
