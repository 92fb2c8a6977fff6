"""`python -m harness SPEC.yaml ...` is the same as `python -m harness.sweep SPEC.yaml ...`."""

from __future__ import annotations

import sys

from harness.sweep import main

if __name__ == "__main__":
    sys.exit(main())
