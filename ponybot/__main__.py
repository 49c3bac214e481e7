import sys

from ponybot.cli import main

sys.exit(main())
