import sys

from volcam.cli import main

sys.exit(main())
