"""``python -m hopaudit`` is the ``hopaudit`` command."""

import sys

from .cli import main

sys.exit(main())
