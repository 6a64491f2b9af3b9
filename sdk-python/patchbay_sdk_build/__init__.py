"""``patchbay-py-build``: build a Python plugin into a component with componentize-py, against
the WIT contract the ``patchbay-sdk`` package carries (``patchbay_sdk/wit``), with the SDK
itself on the module path. Runs in the host's Python (``patchbay_sdk`` only imports inside a
component, so this lives beside it).

    patchbay-py-build app -w transform -o app.wasm          # app.py in the current folder
    patchbay-py-build app -w sink -o sink.wasm -p src       # app.py in src/
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys


def sdk_dir() -> str:
    """The folder of the installed ``patchbay_sdk`` package (found, not imported)."""
    spec = importlib.util.find_spec("patchbay_sdk")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the patchbay_sdk package is not installed in this Python")
    return list(spec.submodule_search_locations)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="patchbay-py-build",
        description="Build a Python Patchbay plugin into a WebAssembly component.",
    )
    parser.add_argument("module", help="the plugin's module, e.g. app for app.py")
    parser.add_argument(
        "-w", "--world", required=True, choices=["source", "transform", "sink"],
        help="the plugin's role",
    )
    parser.add_argument("-o", "--output", required=True, help="the component file to write")
    parser.add_argument(
        "-p", "--path", action="append", default=[],
        help="a folder with the plugin's modules (default: the current folder; repeat it)",
    )
    parser.add_argument(
        "--print-wit", action="store_true", help="print the WIT folder and exit",
    )
    args = parser.parse_args(argv)
    sdk = sdk_dir()
    wit = os.path.join(sdk, "wit")
    if args.print_wit:
        print(wit)
        return 0
    tool = shutil.which("componentize-py") or os.path.join(
        os.path.dirname(sys.executable), "componentize-py"
    )
    if not os.path.exists(tool):
        raise SystemExit(
            "error: componentize-py is not installed: pip install componentize-py==0.25.1"
        )
    command = [tool, "-d", wit, "-w", args.world, "componentize", "-p", os.path.dirname(sdk)]
    for path in args.path or ["."]:
        command += ["-p", path]
    command += [args.module, "-o", args.output]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
