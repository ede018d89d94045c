"""Client-side round-robin: streams from one client spread over two server processes."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from segstream.client import SegmentationClient
from segstream.client._channel import channel_target
from tests.integration.server_process import server_process


def test_streams_spread_across_both_servers(tiny_model: Path, sample_bgr: npt.NDArray[np.uint8]) -> None:
    small = np.ascontiguousarray(sample_bgr[::10, ::10])
    with ExitStack() as stack:
        servers = [stack.enter_context(server_process(tiny_model, "--size", "32")) for _ in range(2)]
        target = ",".join(s.target for s in servers)
        with SegmentationClient(target, timeout=30) as client:
            client.wait_ready(timeout=30)
            for _ in range(6):
                results = list(client.stream([small, small]))
                assert len(results) == 2 and all(r.ok for r in results)
        received = [s.metric("segstream_frames_received_total") for s in servers]
        for server in servers:
            server.terminate()
    assert sum(received) == 12
    assert min(received) >= 4, f"streams did not spread: {received}"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", "localhost:50051"),
        ("dns:///segstream-headless:50051", "dns:///segstream-headless:50051"),
        ("10.0.0.1:50051, 10.0.0.2:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
        ("[::1]:1,[::2]:2", "ipv6:[::1]:1,[::2]:2"),
    ],
)
def test_channel_targets(target: str, expected: str) -> None:
    assert channel_target(target) == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [("a:1,b:2", "host name 'a'"), ("10.0.0.1,10.0.0.2:1", "needs a port"), ("10.0.0.1:1,[::1]:2", "mixes")],
)
def test_bad_server_lists_are_explained(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(target)
