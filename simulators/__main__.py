"""`python -m simulators`: the same as `gateway simulate`."""
import sys

from .cli import main

sys.exit(main())
