"""``python -m fastcnn`` runs the fastcnn command line."""

import sys

from .cli import main

sys.exit(main())
