"""lakeward."""
