"""`python -m sonopacs ARGS` is the `sonopacs` command (how `serve` starts its children)."""

import sys

from sonopacs.cli import main

sys.exit(main())
