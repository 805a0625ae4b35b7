"""``python -m pacsman`` is the same as the ``pacsman`` console script."""

import sys

from pacsman.cli import main

sys.exit(main())
