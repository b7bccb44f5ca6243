"""`python -m wecomd` runs the command line."""
from wecomd.cli import main

raise SystemExit(main())
