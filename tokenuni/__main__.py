import sys

from tokenuni.cli import main

sys.exit(main())
