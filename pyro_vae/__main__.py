"""``python -m pyro_vae ...`` is ``pyro-vae ...``."""

import sys

from .cli import main

sys.exit(main())
