"""Entry points: the ``diffsr`` command line and the Python functions behind it."""
