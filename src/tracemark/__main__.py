"""``python -m tracemark`` runs the CLI."""

from tracemark.cli import main

main()
