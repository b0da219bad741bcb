"""`python -m scale_alibi ...`: the same as the `curate` command."""

from scale_alibi.cli.main import main

if __name__ == "__main__":
    main()
