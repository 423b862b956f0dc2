"""One module per `kdrun` subcommand, each exposing `main(argv)`."""
