"""Paper methods assembled from the exit maths, heads and execution modes."""
