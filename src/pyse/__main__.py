import sys

from pyse.cli import main

sys.exit(main())
