"""``python -m blockbed`` is the ``blockbed`` command."""

import sys

from .cli import main

sys.exit(main())
