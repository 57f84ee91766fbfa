"""Command-line tools around the runs: reports, prediction, YAML recipes, and the set-up scripts."""
