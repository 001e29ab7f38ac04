"""``python -m dlkern ...`` is the ``dlkern`` command."""
import sys

from dlkern.cli import main

sys.exit(main())
