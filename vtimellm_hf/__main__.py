"""`python -m vtimellm_hf` is `vtimellm-hf`, so that launchers start it: `torchrun -m vtimellm_hf COMMAND ...`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
