"""The echo job: writes its message to echo.txt and stdout."""

import sys

message = sys.argv[1]
with open("echo.txt", "w", encoding="utf-8") as handle:
    handle.write(message + "\n")
print(message)
