"""`python -m serve --data OUT --port P`: the same as `curate serve` (used by ServerProcess)."""

from serve.cli import serve

if __name__ == "__main__":
    serve(prog_name="python -m serve")
