"""The `radsim` command line: `radsim.cli.main` builds the parser, one module per command family."""
