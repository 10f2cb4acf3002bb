"""Regenerate converters/emitters/tflite/metadata_schema_py_generated.py from metadata_schema.fbs.

    apt-get install flatbuffers-compiler      # Debian's flatc
    python tools/gen_tflite_metadata_schema.py path/to/metadata_schema.fbs

The schema is tflite-support's ``tensorflow_lite_support/metadata/metadata_schema.fbs`` (Apache-2.0,
The TensorFlow Authors). flatc writes one Python module per table into a ``tflite`` package; this
script runs it in a temp dir and joins the modules into one file (cross-module references become
same-module names; the unprefixed alias functions such as ``Start`` are dropped as they collide).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "converters" / "emitters" / "tflite" / "metadata_schema_py_generated.py"
HEADER = '''# Generated from tflite-support's tensorflow_lite_support/metadata/metadata_schema.fbs
# (schema {version}) by `flatc --python --gen-object-api` ({flatc}) and joined into one module by
# tools/gen_tflite_metadata_schema.py. Do not edit by hand.
#
# The schema is Copyright 2020 The TensorFlow Authors, licensed under the Apache License 2.0
# (http://www.apache.org/licenses/LICENSE-2.0), like this project.
# fmt: off
# flake8: noqa
import flatbuffers
from flatbuffers.compat import import_numpy
np = import_numpy()
'''


def join(pkg: Path) -> str:
    parts = []
    for f in sorted(pkg.glob("*.py")):
        if f.name == "__init__.py":
            continue
        text = f.read_text()
        text = re.sub(r"^def (\w+)\((.*)\):\n    return \w+\(.*\)\n", "", text, flags=re.M)  # alias functions
        text = re.sub(r"^(\s*)(import tflite\.\w+|from tflite\.\w+ import \w+)\s*$", r"\1pass", text, flags=re.M)
        text = re.sub(r"\btflite\.\w+\.(\w+)", r"\1", text)
        text = re.sub(r"^(import flatbuffers|from flatbuffers\.compat import import_numpy|np = import_numpy\(\))\n", "", text, flags=re.M)
        text = re.sub(r"^# (automatically generated|namespace).*\n", "", text, flags=re.M)
        parts.append(f"# ---- {f.stem} ----\n" + text.strip() + "\n")
    return "\n\n".join(parts)


def main(fbs: str) -> None:
    src = Path(fbs).read_text()
    version = re.search(r"Schema Semantic version: ([\d.]+)", src)
    flatc = subprocess.run(["flatc", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["flatc", "--python", "--gen-object-api", "-o", tmp, fbs], check=True, capture_output=True)
        body = join(Path(tmp) / "tflite")
    OUT.write_text(HEADER.format(version=version.group(1) if version else "?", flatc=flatc) + "\n" + body)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/gen_tflite_metadata_schema.py metadata_schema.fbs")
    main(sys.argv[1])
