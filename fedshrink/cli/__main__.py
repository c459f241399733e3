"""``python -m fedshrink.cli``: the ``fedshrink`` command."""

import sys

from fedshrink.cli import main

sys.exit(main())
