import sys

from lradvisor.cli import main

sys.exit(main())
