"""traindeck's command line and terminal cockpit; imports no torch at start-up."""
