"""Renders docs/api.md, the API reference, from the comments in protos/segstream/v1/*.proto.

Run: .venv/bin/python scripts/proto_doc.py [--check]   (--check fails when docs/api.md is stale)
"""

from __future__ import annotations

import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO = "segstream/v1/segmentation.proto"
OUT = REPO / "docs" / "api.md"

# FileDescriptorProto field numbers that SourceCodeInfo paths use.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _VALUE, _METHOD = 2, 2, 2

_TYPES = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    8: "bool",
    9: "string",
    12: "bytes",
    13: "uint32",
}


def _load() -> descriptor_pb2.FileDescriptorProto:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{REPO / 'protos'}", f"-I{files('grpc_tools') / '_proto'}"]
        args += ["--include_source_info", f"--descriptor_set_out={out}", str(REPO / "protos" / PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return next(f for f in fds.file if f.name == PROTO)


def _comments(proto: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    found = {}
    for location in proto.source_code_info.location:
        text = location.leading_comments.strip() or location.trailing_comments.strip()
        if text:
            found[tuple(location.path)] = " ".join(line.strip() for line in text.splitlines())
    return found


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    name = field.type_name.rsplit(".", 1)[-1] if field.type_name else _TYPES.get(field.type, str(field.type))
    if field.type_name.startswith(".segstream."):
        name = f"[{name}](#{name.lower()})"
    if field.label == field.LABEL_REPEATED:
        return f"repeated {name}"
    return f"optional {name}" if field.proto3_optional else name


def render() -> str:
    """The Markdown of docs/api.md: every message, field, enum and value with its .proto comment."""
    proto = _load()
    notes = _comments(proto)
    lines = [
        "# segstream v1 API reference",
        "",
        f"Generated from `protos/{PROTO}` by `scripts/proto_doc.py` (`make docs`); do not edit by hand.",
        f"Package `{proto.package}`.",
        "",
    ]
    for s, service in enumerate(proto.service):
        lines += [f"## Service {service.name}", "", notes.get((_SERVICE, s), ""), ""]
        lines += ["| method | request | response | description |", "|---|---|---|---|"]
        for m, method in enumerate(service.method):
            request = ("stream " if method.client_streaming else "") + method.input_type.rsplit(".", 1)[-1]
            response = ("stream " if method.server_streaming else "") + method.output_type.rsplit(".", 1)[-1]
            lines.append(f"| {method.name} | {request} | {response} | {notes.get((_SERVICE, s, _METHOD, m), '')} |")
        lines.append("")
    lines += ["## Messages", ""]
    for i, message in enumerate(proto.message_type):
        lines += [f"### {message.name}", "", notes.get((_MESSAGE, i), ""), ""]
        if message.field:
            lines += ["| field | number | type | description |", "|---|---|---|---|"]
            for f, field in enumerate(message.field):
                oneof = ""
                if field.HasField("oneof_index") and not field.proto3_optional:
                    oneof = f" (oneof `{message.oneof_decl[field.oneof_index].name}`)"
                note = notes.get((_MESSAGE, i, _FIELD, f), "")
                lines.append(f"| `{field.name}` | {field.number} | {_type(field)}{oneof} | {note} |")
            lines.append("")
    lines += ["## Enums", ""]
    for e, enum in enumerate(proto.enum_type):
        lines += [f"### {enum.name}", "", notes.get((_ENUM, e), ""), ""]
        lines += ["| value | number | description |", "|---|---|---|"]
        for v, value in enumerate(enum.value):
            lines.append(f"| `{value.name}` | {value.number} | {notes.get((_ENUM, e, _VALUE, v), '')} |")
        lines.append("")
    return "\n".join(line for line in lines).rstrip() + "\n"


def main() -> int:
    """Write docs/api.md, or with --check exit 1 when the committed file differs from a fresh render."""
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is stale: run `make docs` and commit it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
