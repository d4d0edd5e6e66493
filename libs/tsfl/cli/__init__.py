"""The ``tsfl`` command line."""
