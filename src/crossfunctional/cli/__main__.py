"""``python -m crossfunctional.cli``: the same as the ``crossfunctional`` command."""

import sys

from crossfunctional.cli import main

sys.exit(main())
