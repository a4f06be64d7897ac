"""The control plane: registry, artifacts, datasets and the loop that improves models.

Never imports ``gateway``; it reaches serving through the ``Deployer`` protocol.
"""
