"""Entry points and the search: ArchSpec, data, profiling, and the slimming engine."""
