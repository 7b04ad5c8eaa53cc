import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

_START_TIMEOUT = 60.0  # s until tensorboard prints its address


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TensorBoardProcess:
    """``tensorboard --logdir D --host 127.0.0.1 --port 0 [flags]`` as a subprocess.

    ``base`` is its address (``http://127.0.0.1:PORT``), ``url`` the same with a
    trailing slash; ``output`` collects what it prints. Always ``close()`` it.
    """

    def __init__(self, logdir, *flags: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                f"--logdir={logdir}",
                "--host=127.0.0.1",
                "--port=0",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self._pump.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.close()
                raise AssertionError(
                    f"tensorboard printed no address: {''.join(self.output)}"
                ) from None
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.base = f"http://127.0.0.1:{match.group(1)}"
                self.url = self.base + "/"
                return

    def _read(self, lines: queue.Queue) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            lines.put(line)

    def get(self, path: str) -> tuple[int, str, bytes]:
        """``(status, Content-Type, body)`` of ``GET path`` (``path`` starts with /)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=30) as reply:
                return reply.status, reply.headers["Content-Type"], reply.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    def get_json(self, path: str):
        status, content_type, body = self.get(path)
        assert (status, content_type) == (200, "application/json"), body
        return json.loads(body)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._pump.join(timeout=10)  # ends at EOF, once the process is gone
        self.process.stdout.close()


@pytest.fixture(scope="session")
def tensorboard_process():
    """The class that starts a real ``tensorboard`` (see TensorBoardProcess)."""
    return TensorBoardProcess
