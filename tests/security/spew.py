"""A job type for the confinement and limit tests: writes bytes to stdout, a result file, then
sleeps and exits with a code (``spew``)."""

from __future__ import annotations

from pathlib import Path

JOBTYPE = """\
name: spew
description: Write SIZE bytes to stdout, out.txt, sleep SECONDS, exit with CODE.
version: "1.0"
command: ["python3", "{jobtype_dir}/spew.py", "{size}", "{seconds}", "{code}"]
parameters:
  size: {type: integer, default: 0, min: 0, max: 100000000000}
  seconds: {type: number, default: 0, min: 0, max: 600}
  code: {type: integer, default: 0, min: 0, max: 255}
results:
  - name: out
    pattern: out.txt
    content_type: text/plain
execution_duration: 120
"""

SCRIPT = """\
import sys
import time

size, seconds, code = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
with open("out.txt", "w") as handle:
    handle.write("done\\n")
block = b"x" * 65536
left = size
while left > 0:
    n = min(left, len(block))
    sys.stdout.buffer.write(block[:n])
    left -= n
sys.stdout.buffer.flush()
time.sleep(seconds)
sys.exit(code)
"""


def spew_jobtypes(directory: Path) -> str:
    """Write the ``spew`` job type into ``directory``; returns it for ``Settings.jobtypes``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spew.yaml").write_text(JOBTYPE)
    (directory / "spew.py").write_text(SCRIPT)
    return str(directory)
