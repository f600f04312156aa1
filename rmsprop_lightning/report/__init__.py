"""Sweep results: loading job records, the comparison table and the plots of ``rmsprop-report``."""
