"""The composition root: configuration, wiring and the ``orrery`` command."""
