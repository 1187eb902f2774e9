"""`python -m ncstudy.report`: see ncstudy.report.cli."""

import sys

from ncstudy.report.cli import main

sys.exit(main())
