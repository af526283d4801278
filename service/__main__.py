"""`python -m service [BUNDLE]`: the same as `imf serve [BUNDLE]`."""

import sys

from service.cli import main

raise SystemExit(main(["serve", *sys.argv[1:]]))
