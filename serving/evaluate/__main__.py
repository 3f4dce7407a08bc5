"""`python -m serving.evaluate DATASET ...`: the eval command on its own."""

import sys

from serving.evaluate.cli import main

sys.exit(main())
