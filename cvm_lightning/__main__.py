import sys

from cvm_lightning.cli import main

sys.exit(main())
