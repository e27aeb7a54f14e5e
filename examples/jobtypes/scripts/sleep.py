"""The sleep job: sleeps, writes sleep.txt, exits with the requested code."""

import sys
import time

seconds = float(sys.argv[1])
code = int(sys.argv[2])
print(f"sleeping {seconds} s", flush=True)
time.sleep(seconds)
with open("sleep.txt", "w", encoding="utf-8") as handle:
    handle.write(f"slept {seconds} s, exit code {code}\n")
sys.exit(code)
