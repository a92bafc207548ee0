"""`python -m charlm` (and `torchrun -m charlm`) run the CLI."""

from charlm.cli import main

if __name__ == "__main__":
    main()
