"""Minimum-dataset extracts: the columns and rows one member may see, written read-only."""
