"""A started server loads no client module: the layer rule of tests/unit/test_layers.py, at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_starting_a_server_loads_no_client_module(tiny_model: Path) -> None:
    # A fresh interpreter: this test process has long imported the client for other tests.
    script = f"""
import asyncio, sys
from pathlib import Path
from segstream.server.app import SegstreamServer
from segstream.server.config import ModelSpec, ServerConfig

async def main() -> None:
    config = ServerConfig(models=(ModelSpec("tiny", Path({str(tiny_model)!r})),), host="127.0.0.1", port=0,
                          size=64, device="cpu", threads=1)
    server = SegstreamServer(config)
    await server.start()
    await server.stop(grace=0.5)

asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith(("segstream.client", "segstream.ros2"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
