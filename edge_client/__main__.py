"""``python -m edge_client``: the sphere-edge command."""

import sys

from edge_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
