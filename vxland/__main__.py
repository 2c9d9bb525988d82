"""python -m vxland: the same as the `vxland` command."""

import sys

from .cli import main

sys.exit(main())
