"""`python -m benchmarks.gpu_check`."""

from benchmarks.gpu_check.driver import main

raise SystemExit(main())
