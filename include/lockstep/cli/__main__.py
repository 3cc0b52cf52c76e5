"""``python -m lockstep.cli``: the same as the ``lockstep`` command."""

from lockstep.cli import main

main()
