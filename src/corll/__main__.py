"""`python -m corll …` runs the command line."""

from corll.cli import app

app()
