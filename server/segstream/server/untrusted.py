"""Client-supplied text, cut short before it reaches a status message or a log line.

A status message travels back in the call's trailing metadata: echoing a 100 kB model name there
makes the client's gRPC library refuse the whole status ("received metadata size exceeds hard
limit"), so the client sees RESOURCE_EXHAUSTED instead of the real error, and the log gets a
100 kB line. Every string a client chose is passed through `clip` before it is quoted.
"""

from __future__ import annotations

# Long enough for any real model name, method or peer address; short enough for any message.
CLIP_LIMIT = 200


def clip(text: str, limit: int = CLIP_LIMIT) -> str:
    """The start of `text`, at most `limit` characters, followed by how many characters were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}[... {len(text) - limit} more characters]"
