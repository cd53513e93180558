"""`python -m kerasrnn` runs the command line."""

from kerasrnn.cli import run

run()
