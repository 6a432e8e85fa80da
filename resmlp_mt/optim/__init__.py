"""fairseq optim of the plugin; importing a module registers it."""
