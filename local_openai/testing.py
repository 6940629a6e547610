"""Run the local OpenAI-compatible server as a subprocess, for tests and benchmarks.

    from local_openai.testing import running_server

    with running_server(api_key="sk-test-key-000000000000", tpm=30_000) as srv:
        client = openai.OpenAI(api_key=srv.api_key, base_url=srv.base_url)
        ...
        srv.set_faults(fail_next=[{"status": 429}])
        print(srv.stats())

The server is a real process on a free loopback port, so the client code
under test talks real HTTP. tiktoken needs TIKTOKEN_CACHE_DIR when offline;
it is passed through from the caller's environment.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
READY_PREFIX = "local OpenAI-compatible server listening on "
# Key used when no api_key is given (the server then accepts any non-empty key).
DEFAULT_CLIENT_KEY = "sk-local-any-key"


def _cli_args(options):
    """Turn keyword options into CLI flags: rpm=10 -> --rpm 10, verbose=True -> --verbose."""
    args = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


class LocalServer:
    """A server subprocess. Options are the CLI options (api_key, rpm, tpm,
    latency_ms, latency_per_1k_ms, fault_rate, fault_statuses, seed,
    ratelimit_headers, verbose)."""

    def __init__(self, startup_timeout=30.0, **options):
        self.options = dict(options)
        self.api_key = options.get("api_key") or DEFAULT_CLIENT_KEY
        self.startup_timeout = startup_timeout
        self.proc = None
        self.base_url = None  # e.g. "http://127.0.0.1:PORT/v1"
        self.root_url = None  # e.g. "http://127.0.0.1:PORT"
        self._stderr = None

    # -- lifecycle -----------------------------------------------------------

    def start(self):
        if self.proc is not None:
            raise RuntimeError("server already started")
        options = dict(self.options)
        host = options.pop("host", "127.0.0.1")
        cmd = [sys.executable, SERVER_SCRIPT, "--host", host, "--port", "0"]
        cmd += _cli_args(options)
        # Only the options given here count: ignore LOCAL_OPENAI_* from the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_OPENAI_")}
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = tempfile.TemporaryFile()  # a file never fills up like a pipe
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, env=env, text=True)
        atexit.register(self.stop)
        try:
            line = self._read_ready_line()
            self.base_url = line[len(READY_PREFIX):].strip()
            self.root_url = self.base_url[: -len("/v1")]
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_ready_line(self):
        # readline() blocks, so read in a thread to be able to time out.
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            raise RuntimeError(f"server did not start in {self.startup_timeout}s: "
                               f"{self.stderr_text()}") from None
        if not line.startswith(READY_PREFIX):
            self.proc.wait(timeout=5)
            raise RuntimeError(f"server failed to start (exit {self.proc.returncode}): "
                               f"{line!r} {self.stderr_text()}")
        return line

    def _wait_healthy(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with urllib.request.urlopen(self.root_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"server not answering: {self.stderr_text()}") from None
            time.sleep(0.05)

    def stop(self):
        """Stop the process (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        self.returncode = proc.returncode
        if self._stderr is not None:
            self._final_stderr = self.stderr_text()
            self._stderr.close()
            self._stderr = None

    def stderr_text(self):
        """What the server wrote to stderr so far (verbose logs, errors)."""
        if self._stderr is None:
            return getattr(self, "_final_stderr", "")
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()

    # -- control endpoints ---------------------------------------------------

    def _call(self, method, path, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} -> {e.code}: {e.read().decode()}") from None

    def stats(self):
        """Counters: requests, ok_requests, tokens, inputs, status_counts, max_concurrent."""
        return self._call("GET", "/_stats")

    def reset(self):
        """Zero stats and rate-limit windows, clear fail_next."""
        return self._call("POST", "/_reset", {})

    def set_faults(self, **faults):
        """Merge fault settings (latency_ms, fault_rate, fail_next=[...], rpm, tpm,
        ratelimit_headers="all" | "limit-tokens" | "remaining" | "none"...)."""
        return self._call("POST", "/_faults", faults)

    def faults(self):
        return self._call("GET", "/_faults")


@contextlib.contextmanager
def running_server(**options):
    """Context manager: a started LocalServer, stopped on exit."""
    server = LocalServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
