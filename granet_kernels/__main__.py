"""`python -m granet_kernels`: the build's backends and a correctness self-check of every op."""

import sys

from granet_kernels.selfcheck import main

sys.exit(main())
