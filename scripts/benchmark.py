"""Time our training loop against a typical DataLoader loop: `python scripts/benchmark.py --help`.

The same as `lradvisor bench`; the code lives in lradvisor/engine/bench.py.
"""

import sys

from lradvisor.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
