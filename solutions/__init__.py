"""Reference implementations of every exercise, at the paths that mirror `mili/`."""
