"""``python -m jaxplan``: the ``jaxplan`` command."""
import sys

from .entry import main

sys.exit(main())
