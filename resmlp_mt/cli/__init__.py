"""Console commands of the plugin (registered in setup.py)."""
