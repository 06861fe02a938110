"""``python -m bench run [--quick] [--db sqlite|postgresql] [--all] [--json FILE]``."""

from bench.run import main

raise SystemExit(main())
