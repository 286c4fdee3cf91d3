"""Regenerate the Python stubs in client/swaa_client/_pb from proto/ (checked in; a test verifies they match).

    python proto/generate.py [--check]
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOS = ["swaa/v1/generation.proto"]
DEST = os.path.join(ROOT, "client", "swaa_client", "_pb")
PACKAGE = "swaa_client._pb"


def generate(out: str) -> None:
    from grpc_tools import protoc

    for proto in PROTOS:
        rc = protoc.main(["protoc", f"-I{os.path.join(ROOT, 'proto')}", f"--python_out={out}", f"--pyi_out={out}",
                          f"--grpc_python_out={out}", proto])
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto}")
    # generated modules import siblings as `swaa.v1`; make them live under swaa_client._pb
    for dirpath, _, files in os.walk(out):
        for f in files:
            if f.endswith((".py", ".pyi")):
                p = os.path.join(dirpath, f)
                text = open(p).read().replace("from swaa.v1 import", f"from {PACKAGE}.swaa.v1 import")
                open(p, "w").write(text)
    for d in ("", "swaa", "swaa/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()


def main() -> int:
    check = "--check" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp)
        if check:
            cmp = filecmp.dircmp(tmp, DEST)
            bad = []

            def walk(c, prefix=""):
                bad.extend(prefix + f for f in c.diff_files + c.left_only)
                for name, sub in c.subdirs.items():
                    walk(sub, prefix + name + "/")

            walk(cmp)
            if bad:
                print(f"stubs out of date: {bad}; run python proto/generate.py", file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(DEST, ignore_errors=True)
        shutil.copytree(tmp, DEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
