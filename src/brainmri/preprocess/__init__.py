"""brainmri.preprocess."""
