"""controller_vault: the controller's vault, the only place personal data can be read."""
