"""Subcommand groups of the ``intake`` command, one module each, added in intake.cli."""
