"""The cockpit's screens: the run dashboard, the run browser, and the dialogs they open."""
