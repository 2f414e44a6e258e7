"""`python -m codegen ...` (and `torchrun ... -m codegen ...`): the command line."""

import sys

from .cli import main

sys.exit(main())
