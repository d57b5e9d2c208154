"""References for chapter 06 (the server): streaming chunks and request metrics."""
