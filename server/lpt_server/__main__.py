"""`python -m lpt_server ...` is `lpt ...`."""
from .cli import main

raise SystemExit(main())
