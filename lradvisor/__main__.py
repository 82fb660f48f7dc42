import sys

from lradvisor.cli import console

sys.exit(console())
