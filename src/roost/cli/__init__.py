"""The `roost` command line."""
