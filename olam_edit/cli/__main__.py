"""``python -m olam_edit.cli ...``: the ``olam-edit`` command, also as ``torchrun -m olam_edit.cli ...``."""

import sys

from olam_edit.cli import main

if __name__ == "__main__":
    sys.exit(main())
