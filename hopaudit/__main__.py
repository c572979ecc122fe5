"""``python -m hopaudit`` is the ``hopaudit`` command."""

import sys

from hopaudit.cli import main

sys.exit(main())
