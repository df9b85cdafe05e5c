import sys

from codl.cli import main

sys.exit(main())
