"""`python -m granet_kernels.train`: the granet-train command line."""

import sys

from granet_kernels.train.cli import main

sys.exit(main())
