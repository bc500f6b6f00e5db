"""``python -m benchmarks.gpu``: the parent process (see benchmarks/gpu/cli.py)."""

import sys

from benchmarks.gpu.cli import main

sys.exit(main())
