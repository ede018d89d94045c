"""docs/api.md is generated from the .proto comments and must not go stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_api_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("proto_doc", REPO / "scripts" / "proto_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert "| Segment | stream SegmentRequest | stream SegmentResponse |" in rendered
    assert (REPO / "docs" / "api.md").read_text() == rendered, "docs/api.md is stale: run `make docs`"
