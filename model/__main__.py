"""`python -m model ...`: the ML commands (train, evaluate, predict, data, features)."""

from model.cli import main

raise SystemExit(main())
