"""fairseq tasks of the plugin; importing a module registers it."""
