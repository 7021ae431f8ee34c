"""The ``tierfleet`` command. Each area registers its commands from its own module."""
