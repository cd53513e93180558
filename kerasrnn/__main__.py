"""`python -m kerasrnn` runs the command line."""

import sys

from kerasrnn.cli import main

sys.exit(main())
