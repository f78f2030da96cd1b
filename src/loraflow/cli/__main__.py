"""`python -m loraflow.cli ...`: the same as the `loraflow` command."""

from loraflow.cli import main

main()
