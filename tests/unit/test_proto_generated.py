"""The committed generated code equals what `make proto` produces from protos/."""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("segmentation_pb2.py", "segmentation_pb2.pyi", "segmentation_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    src = tmp_path / "protos"
    shutil.copytree(REPO / "protos" / "segstream", src / "segstream", ignore=shutil.ignore_patterns("*.py*"))
    proto = "segstream/v1/segmentation.proto"
    well_known = files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{src}",
        f"-I{well_known}",
        f"--python_out={src}",
        f"--pyi_out={src}",
        f"--grpc_python_out={src}",
        str(src / proto),
    ]
    assert protoc.main(args) == 0
    for name in GENERATED:
        fresh = (src / "segstream" / "v1" / name).read_text()
        committed = (REPO / "protos" / "segstream" / "v1" / name).read_text()
        assert fresh == committed, f"protos/segstream/v1/{name} is stale: run `make proto` and commit the result"
