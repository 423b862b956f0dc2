"""`python -m kdrun ...` behaves exactly like the `kdrun` console script."""

from kdrun.cli import main

if __name__ == "__main__":
    main()
