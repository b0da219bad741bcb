"""The `curate` command line: the click group and one module per command."""
