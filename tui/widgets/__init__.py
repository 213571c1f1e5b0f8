"""Textual widgets of the traindeck cockpit."""
