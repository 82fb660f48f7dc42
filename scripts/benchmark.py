"""Time our training loop against a typical DataLoader loop: `python scripts/benchmark.py --help`.

The same as `lradvisor bench`; the code lives in lradvisor/bench.py.
"""

import sys

from lradvisor.bench import build_parser, main

if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
