"""Developer tools of the project (run from the repository root, not installed)."""
