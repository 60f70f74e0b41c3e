"""`python -m hookloop` runs the command line."""

import sys

from hookloop.cli import main

sys.exit(main())
