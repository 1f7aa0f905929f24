"""The lab beside the library, run from a clone: the benchmark (``bench``), the comparison over seeds
(``reproduce``), the training fingerprint (``fingerprint``), provenance, the zoo sweep and probes."""
