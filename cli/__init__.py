"""The `unlearn` command line: parses, calls the library, prints and writes files."""
