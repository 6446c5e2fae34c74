"""The search's library: the state it walks, the slimmer and the evolution baseline, the supernet evaluator, the
measured-target check, loading of its inputs and writing of its outputs. `nas.slim` parses, builds and calls."""
