import sys

from distmix.cli import main

sys.exit(main())
