"""References for chapter 06 (load testing): the analysis of raw request timings."""
