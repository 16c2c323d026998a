"""``python -m fastcnn`` runs the fastcnn command line."""

import sys

from .tools.cli import main

sys.exit(main())
