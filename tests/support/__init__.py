"""What the tests share, so that no test module imports another's: WeCom's side (peer, samples),
configs and servers (config, server, base), the store behind the production writer (harness),
PostgreSQL, the browser, the CLI and the deployment guide's examples.

conftest.py turns the shared fixtures into pytest fixtures; everything else is imported from here.
"""
from pathlib import Path

# The repository's root (tests/support/../..).
ROOT = Path(__file__).resolve().parent.parent.parent
