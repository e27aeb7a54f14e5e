"""The fail job: complains on stderr and exits with the requested code."""

import sys

code = int(sys.argv[1])
print(f"fail: this job fails on purpose with exit code {code}", file=sys.stderr)
sys.exit(code)
