"""``python -m benchmarks [--quick] [--out FILE]``: every benchmark, one markdown report."""

from benchmarks.run_all import main

raise SystemExit(main())
