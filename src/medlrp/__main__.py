"""``python -m medlrp``: the command line."""

from medlrp.cli import main

if __name__ == "__main__":
    main()
