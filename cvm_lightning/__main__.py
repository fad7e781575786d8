import sys

from cvm_lightning.app.cli import main

sys.exit(main())
