"""Dock widgets, dialogs, QgsTask adapters and layer styling (the Qt side of RS Lab)."""
