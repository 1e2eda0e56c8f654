"""`python -m opsmgr` runs the `opsmgr` command."""

from opsmgr.cli import main

main()
