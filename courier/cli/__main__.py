"""``python -m courier.cli``: the ``courier`` command."""

from courier.cli import main

main()
