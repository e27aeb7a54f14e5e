"""ARP's counters example, unchanged in spirit: POST JSON to BATCH_UPDATE_URL ten times.

Uses only the standard library so it runs anywhere a job runs.
"""

import json
import os
import random
import string
import sys
import time
import urllib.request

interval = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
update_url = os.environ["BATCH_UPDATE_URL"]
print("This is a test function for the batch submitting.\n")
print(f"The update_url is: {update_url.split('?')[0]}\n")
for i in range(10):
    rand_char = random.choice(string.ascii_uppercase)
    print(f"Step: {i + 1}, {rand_char}", flush=True)
    body = json.dumps(
        {"counters": {"Example Counter": [i + 1, "red"], "Random Char": rand_char}}
    ).encode()
    request = urllib.request.Request(
        update_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    time.sleep(interval)
