"""`python -m armor ...` and `torchrun -m armor train ...` run the same CLI."""

from .app.cli import app

if __name__ == "__main__":
    app()
