"""fairseq criterions of the plugin; importing a module registers it."""
