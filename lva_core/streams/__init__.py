"""The stream engine: sources, decoding, lifecycle, and the loop that feeds analytics."""
