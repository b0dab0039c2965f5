"""`python -m chatterbox_status` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
