"""`python -m segdemo ...`"""

import sys

from segdemo.cli import main

sys.exit(main())
