"""The series' commands (pyproject [project.scripts]): run, predict, bench, drift, readme."""
