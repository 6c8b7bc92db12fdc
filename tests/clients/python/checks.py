"""The Python client tests' one assertion helper (test_package.py, retry_test.py): count a check,
or print what failed and exit 1."""
import sys

count = 0


def check(cond, what):
    global count
    count += 1
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
