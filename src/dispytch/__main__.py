import sys

from dispytch.cli import main

sys.exit(main())
