"""``python -m preprocess``: the ``epic-extract`` command group."""

from preprocess.cli import extract

if __name__ == "__main__":
    extract()
