"""One module per CLI subcommand. Each has `register(subparsers)`, which adds its parser and
sets `handler` (a function of the parsed args returning the exit code). `imgfeat.cli`
discovers the modules here, so adding a command means adding a file."""
