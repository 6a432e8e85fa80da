"""Image data for the ``image_classification`` task: sources, and their fairseq dataset."""
