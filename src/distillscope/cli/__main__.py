"""``python -m distillscope.cli ...``: how a sweep starts each of its runs."""
import sys

from . import main

sys.exit(main())
