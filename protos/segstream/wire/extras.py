"""The server extra: a command that needs its packages says so in one line instead of an ImportError.

`pip install segstream` installs the client. segstream-server, segstream-models, segstream-bench and
segstream-eval --model also need the `server` extra (ONNX Runtime, onnx and the server's own packages,
or `server-cpu` for the CPU-only ONNX Runtime). Each of them calls `require_server_extra` before it imports
any of those, so a missing package is `PROG: error: ... not installed: install segstream[server] ...` with
exit status 2, like every other bad start.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping

# Import name -> the distribution that provides it (onnxruntime-gpu provides `onnxruntime` too).
ONNX: Mapping[str, str] = {"onnx": "onnx"}
ONNX_RUNTIME: Mapping[str, str] = {"onnxruntime": "onnxruntime", **ONNX}
SERVER: Mapping[str, str] = {
    **ONNX_RUNTIME,
    "grpc_reflection": "grpcio-reflection",
    "prometheus_client": "prometheus-client",
}


def missing_packages(modules: Mapping[str, str]) -> list[str]:
    """The distributions of `modules` whose module cannot be found on sys.path, in order."""
    return [dist for module, dist in modules.items() if not _importable(module)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module without a spec
        return False


def server_extra_message(prog: str, missing: list[str]) -> str:
    """The one error line for `missing` distributions of the server extra."""
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"{prog}: error: {names} {verb} not installed: install segstream[server] "
        "(from a checkout: pip install '.[server]', or '.[server-cpu]' for the CPU-only ONNX Runtime)"
    )


def require_server_extra(prog: str, modules: Mapping[str, str] = SERVER) -> None:
    """Returns when every module of `modules` can be imported; else prints the error line and exits 2."""
    missing = missing_packages(modules)
    if missing:
        print(server_extra_message(prog, missing), file=sys.stderr)
        raise SystemExit(2)
