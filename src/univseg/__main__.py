"""``python -m univseg`` behaves exactly like the ``univseg`` command."""
import sys

from .cli import main

sys.exit(main())
