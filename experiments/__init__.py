"""absl binaries for the paper's experiments, built on the ``relscreen`` library."""
