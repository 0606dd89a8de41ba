"""Data: raw-annotation readers, training-format loaders, feature extraction and the synthetic moments dataset."""
