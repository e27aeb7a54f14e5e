"""sum4's main step: three sub-jobs, the third after the first two."""

import sys

from jobmill_job import sub_job

a, b, c, d = (int(value) for value in sys.argv[1:5])
first = sub_job("add2", {"a": a, "b": b})
second = sub_job("add2", {"a": c, "b": d})
last = sub_job("add2", {}, after=[first, second])
print(f"sub-jobs: {first} {second} then {last}")
