"""Hydra finds launchers in the ``hydra_plugins`` namespace: the population launcher's entry is here."""
