"""Start `mili serve` in a child process on a free loopback port (tests, examples, the notebook).

    with launch_server("data/mili-tiny-qwen3", args=["--max-num-seqs", "64"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        ...
    # leaving the block sends SIGTERM, waits for the drain and removes the server's log file
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mili.exercise import repo_root


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LaunchedServer:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path):
        self.process, self.port, self.log_path = process, port, log_path
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> int:
        """The status code of GET /health (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mili serve exited with status {self.process.returncode}:\n{self.log()[-3000:]}")
            if self.health() == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"mili serve was not healthy after {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful drain), then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def launch_server(model: str | Path, *, args: list[str] = (), port: int | None = None, startup_timeout: float = 120.0,
                  env: dict | None = None, module: str = "mili.server.cli"):
    """Run `python -m MODULE --model MODEL --port PORT ARGS...` (MODULE: `mili.server.cli`, or a
    test's wrapper around its `main`); yield once /health says 200."""
    port = port or free_port()
    log_file = tempfile.NamedTemporaryFile("w", prefix="mili-serve-", suffix=".log", delete=False)
    command = [sys.executable, "-m", module, "--model", str(model), "--port", str(port),
               "--log-level", "warning", *args]
    process = subprocess.Popen(command, cwd=repo_root(), stdout=log_file, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    server = LaunchedServer(process, port, Path(log_file.name))
    try:
        server.wait_ready(startup_timeout)
        yield server
    finally:
        server.stop()
        log_file.close()
        server.log_path.unlink(missing_ok=True)
