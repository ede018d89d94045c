"""Reading an MCAP file back the way a consumer would: its summary, and its messages decoded.

Protobuf messages are decoded with the schema the file itself carries (a FileDescriptorSet), so the
check does not depend on any Foxglove message package; JSON messages are plain JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mcap.reader import make_reader


@dataclass
class Recorded:
    """What one MCAP file holds, by topic."""

    schemas: dict[str, tuple[str, str]] = field(default_factory=dict)  # topic: (schema name, message encoding)
    messages: dict[str, list[tuple[int, Any]]] = field(default_factory=lambda: defaultdict(list))  # (log time, msg)
    counts: dict[str, int] = field(default_factory=dict)  # topic: messages, from the summary's statistics
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)


def read_mcap(path: Path) -> Recorded:
    recorded = Recorded()
    classes: dict[int, Any] = {}
    with path.open("rb") as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None, "an MCAP file without a summary"
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            recorded.schemas[channel.topic] = (schema.name, channel.message_encoding)
            recorded.counts[channel.topic] = summary.statistics.channel_message_counts.get(channel.id, 0)
            if schema.encoding == "protobuf":
                files = descriptor_pb2.FileDescriptorSet.FromString(schema.data)
                pool = descriptor_pool.DescriptorPool()
                for file in files.file:
                    pool.Add(file)
                classes[channel.id] = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
        for meta in reader.iter_metadata():
            recorded.metadata[meta.name] = dict(meta.metadata)
        for _, channel, message in reader.iter_messages(log_time_order=True):
            if channel.message_encoding == "json":
                decoded: Any = json.loads(message.data)
            else:
                decoded = classes[channel.id].FromString(message.data)
            recorded.messages[channel.topic].append((message.log_time, decoded))
    return recorded


def stamp_ns(message: Any) -> int:
    """The `timestamp` of a decoded message (protobuf Timestamp or JSON {sec, nsec}) in ns."""
    if isinstance(message, dict):
        return int(message["timestamp"]["sec"]) * 10**9 + int(message["timestamp"]["nsec"])
    return int(message.timestamp.seconds) * 10**9 + int(message.timestamp.nanos)
