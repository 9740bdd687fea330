"""``python -m hilrl.cli``: the `hilrl` command."""

from hilrl.cli import main

if __name__ == "__main__":
    main()
