"""Privacy evaluation of the served defenses: attacks, experiment, report."""
