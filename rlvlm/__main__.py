import sys

from rlvlm.cli import main

sys.exit(main())
