"""Domain packages: file formats, datasets, degradations and metrics for each field."""
