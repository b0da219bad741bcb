"""`python -m scale_alibi.serve --data OUT --port P`: the same as `curate serve` (used by ServerProcess)."""

from scale_alibi.cli.serve import serve

if __name__ == "__main__":
    serve(prog_name="python -m scale_alibi.serve")
