"""The `unlearn` command: one module per subcommand over the library's workflows (``unlearn.workflows``)."""
