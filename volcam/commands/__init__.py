"""Sub-commands of the ``volcam`` command line (one module each)."""
