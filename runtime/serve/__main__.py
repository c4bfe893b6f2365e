"""`python -m slimrt.serve MODEL.slim [options]`: same as `slimrt serve`."""

import sys

from .cli import main

sys.exit(main())
