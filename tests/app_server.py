"""The app served by a child process, as `causal-sprites app` serves it: for the tests and the
app benchmark."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from causal_sprites.app import HOST
from causal_sprites.errors import CausalSpritesError


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(
    run: str | Path, host: str = HOST, port: int | None = None, timeout: float = 180.0
) -> Iterator[str]:
    """The app of a run served by a child process, as `causal-sprites app` serves it: yields its
    URL once it answers, and stops the process after (tests, benchmarks)."""
    port = free_port(host) if port is None else port
    code = f"from causal_sprites.app import launch; launch({str(run)!r}, {host!r}, {port})"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            deadline = time.monotonic() + timeout
            while not _answers(url):
                if child.poll() is not None or time.monotonic() > deadline:
                    errors.seek(0)
                    tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
                    raise CausalSpritesError(f"the app did not start on {url}: {' '.join(tail)}")
                time.sleep(0.25)
            yield url
        finally:
            child.terminate()
            child.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
