import sys

from gateway.cli.main import main

# The guard matters: training children are spawned, and spawn re-imports the main module
# (as __mp_main__); without it every child would start a gateway of its own.
if __name__ == "__main__":
    sys.exit(main())
